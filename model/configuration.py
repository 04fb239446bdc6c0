"""`MavorsConfig`: the composite configuration of Mavors (paper §3, §5.1).

A SigLIP vision sub-config (the intra-chunk vision encoder, IVE), a Qwen2 text sub-config (the LLM),
and the Mavors-specific fields below. Defaults are the paper's cluster values (SigLIP-so400m/14 at
384 px, F=16, L_inter=3, Qwen2.5-7B); the tiny test checkpoint overrides them (64 px / patch 16,
F=4) through ``model.conversion.build_from_components``.

    from model import MavorsConfig
    cfg = MavorsConfig(vision_config={...siglip...}, text_config={...qwen2...}, frames_per_chunk=16)
"""
from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig, Qwen2Config, SiglipVisionConfig


class MavorsConfig(PreTrainedConfig):
    model_type = "mavors"
    sub_configs = {"vision_config": SiglipVisionConfig, "text_config": Qwen2Config}

    vision_config: dict | SiglipVisionConfig | None = None
    """SigLIP vision tower (patch size, width, depth, pretraining resolution R_v = image_size).
    Cluster: siglip-so400m-patch14-384."""
    text_config: dict | Qwen2Config | None = None
    """Qwen2 causal LM. Cluster: Qwen2.5-7B(-Instruct)."""
    frames_per_chunk: int = 16
    """F: frames per video chunk, the temporal extent of the 3D patch embedding (Eq. 1). Paper: 16.
    Tiny test checkpoint: 4."""
    ifa_num_layers: int = 3
    """L_inter: causal Transformer layers of the inter-chunk feature aggregator (paper: 3)."""
    ifa_num_heads: int = 16
    """Attention heads of the aggregator (width = vision hidden size; so400m 1152/16 = 72 per head)."""
    ifa_intermediate_size: int | None = None
    """MLP width of the aggregator; None = the vision tower's intermediate size."""
    ifa_rope_theta: float = 10000.0
    """Base of the chunk-level rotary encoding (C-RoPE, Eq. 4)."""
    pooling_size: int = 2
    """Spatial pooling window after the ViT (2 gives n_V/4 tokens per chunk). Odd patch grids are
    pooled with ceil: the last row/column window averages only the patches that exist."""
    projector_hidden_act: str = "gelu"
    """Activation of the 2-layer MLP projector (vision width -> LLM width -> LLM width)."""
    video_fps: float = 2.0
    """Fixed transcoding fps: videos are resampled to this rate so a chunk's C-RoPE id is its first
    frame's timestamp * fps / F. Not given in the paper; 2 fps is our cluster default (8 s/chunk)."""
    max_chunks: int = 64
    """Chunks per video before frame dropping ("accelerated playback", §3.5) kicks in.
    Cluster default 64 (1024 frames); tiny: 8."""
    max_sub_images: int = 9
    """Upper bound on m*n in the image partition (Eq. 8); follows MiniCPM-V's max_slice_nums."""
    image_token_id: int = 151655
    """`<|image_pad|>`: one per visual token of an image (thumbnail + sub-images)."""
    video_token_id: int = 151656
    """`<|video_pad|>`: one per visual token of a video."""
    vision_start_token_id: int = 151652
    """`<|vision_start|>` opening every image/video span."""
    vision_end_token_id: int = 151653
    """`<|vision_end|>` closing every image/video span."""
    token_compression_threshold: float | None = None
    """§5.4 token compression: cosine similarity above which tokens at the same index of adjacent
    video chunks are merged (inference only). None = off (default)."""
    tie_word_embeddings: bool = False
    """Follows the text config (Qwen2.5-7B does not tie; the tiny Qwen2 does)."""

    def __post_init__(self, **kwargs):
        if isinstance(self.vision_config, dict):
            self.vision_config = SiglipVisionConfig(**{k: v for k, v in self.vision_config.items()
                                                       if k != "model_type"})
        elif self.vision_config is None:
            self.vision_config = SiglipVisionConfig(
                hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                image_size=384, patch_size=14)
        if isinstance(self.text_config, dict):
            self.text_config = Qwen2Config(**{k: v for k, v in self.text_config.items() if k != "model_type"})
        elif self.text_config is None:
            self.text_config = Qwen2Config()
        self.tie_word_embeddings = bool(self.text_config.tie_word_embeddings)
        super().__post_init__(**kwargs)

    def validate_mavors(self) -> None:
        """Raise ValueError for settings the architecture cannot honour."""
        head_dim, rest = divmod(self.vision_config.hidden_size, self.ifa_num_heads)
        if rest or head_dim % 2:
            raise ValueError(f"vision hidden_size {self.vision_config.hidden_size} must split into "
                             f"{self.ifa_num_heads} heads of even size for C-RoPE")
        if self.frames_per_chunk < 1 or self.pooling_size < 1 or self.max_chunks < 1:
            raise ValueError("frames_per_chunk, pooling_size and max_chunks must be >= 1")
        if self.token_compression_threshold is not None and not -1.0 <= self.token_compression_threshold <= 1.0:
            raise ValueError("token_compression_threshold is a cosine similarity in [-1, 1] or None")

    @property
    def patch_size(self) -> int:
        return self.vision_config.patch_size

    @property
    def image_size(self) -> int:
        """R_v: the ViT's pretraining resolution (pixels per side)."""
        return self.vision_config.image_size


# AutoConfig resolves model_type "mavors" wherever the config class is importable (no remote code); the
# processor and model classes register themselves with AutoProcessor / AutoModelForImageTextToText likewise.
AutoConfig.register("mavors", MavorsConfig, exist_ok=True)
