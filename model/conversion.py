"""Initialise Mavors from separate local checkpoints: SigLIP (vision) + Qwen2/Qwen2.5 (LLM) (§3.3, §4).

The SigLIP 2D patch kernel is replicated F times along time and its bias multiplied by F, so that
Conv3d(chunk)/F (Eq. 1) of an image repeated F times equals SigLIP's patch embedding; position
embedding, ViT layers and post-layernorm are copied. The Qwen2 LM is copied whole. The IFA starts as
the identity (zero residual outputs) and the projector is random (trained in stage 1).

    from model.conversion import build_from_components
    model = build_from_components("ckpt/siglip-so400m-patch14-384", "ckpt/Qwen2.5-7B-Instruct")
    model, processor = build_with_processor(siglip_dir, qwen_dir, frames_per_chunk=4, max_chunks=8)

Nothing is downloaded and ``trust_remote_code`` is never enabled.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen2ForCausalLM, SiglipVisionModel

from model.configuration import MavorsConfig
from model.modeling import MavorsForConditionalGeneration

PLACEHOLDER_TOKENS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}


def placeholder_ids(tokenizer) -> dict[str, int]:
    """Config fields for the vision placeholder tokens, read from the tokenizer."""
    ids = {}
    for field, token in PLACEHOLDER_TOKENS.items():
        tid = tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {token} token (needed as Mavors placeholder)")
        ids[field] = tid
    return ids


@torch.no_grad()
def inflate_siglip(model: MavorsForConditionalGeneration, siglip: SiglipVisionModel) -> None:
    """Copy SigLIP into the IVE with the 2D kernel replicated F times (weights and bias * F, Eq. 1)."""
    ive, emb = model.ive, siglip.embeddings
    frames = model.config.frames_per_chunk
    ive.patch_embedding.weight.copy_(emb.patch_embedding.weight[:, :, None].repeat(1, 1, frames, 1, 1))
    ive.patch_embedding.bias.copy_(emb.patch_embedding.bias * frames)
    ive.position_embedding.weight.copy_(emb.position_embedding.weight)
    ive.encoder.load_state_dict(siglip.encoder.state_dict())
    ive.post_layernorm.load_state_dict(siglip.post_layernorm.state_dict())


def build_from_components(siglip_path: str | Path, qwen_path: str | Path, tokenizer_path: str | Path | None = None,
                          dtype: torch.dtype = torch.float32, **overrides) -> MavorsForConditionalGeneration:
    """A MavorsForConditionalGeneration from local SigLIP and Qwen2 checkpoints.

    overrides: MavorsConfig fields (frames_per_chunk, ifa_num_heads, video_fps, max_chunks, ...).
    The placeholder token ids come from the tokenizer at tokenizer_path (default: qwen_path).
    """
    siglip = SiglipVisionModel.from_pretrained(siglip_path, dtype=dtype, trust_remote_code=False)
    llm = Qwen2ForCausalLM.from_pretrained(qwen_path, dtype=dtype, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or qwen_path, trust_remote_code=False)
    fields = {**placeholder_ids(tokenizer), **overrides}
    if "ifa_num_heads" not in fields:
        fields["ifa_num_heads"] = siglip.config.num_attention_heads
    config = MavorsConfig(vision_config=siglip.config.to_dict(), text_config=llm.config.to_dict(), **fields)
    model = MavorsForConditionalGeneration(config).to(dtype)
    inflate_siglip(model, siglip)
    model.llm.load_state_dict(llm.state_dict())
    model.llm.generation_config = llm.generation_config
    return model


def build_with_processor(siglip_path, qwen_path, tokenizer_path=None, **overrides):
    """(model, MavorsProcessor) sharing one config; the processor's tokenizer is the Qwen one."""
    from model.processing import MavorsProcessor

    model = build_from_components(siglip_path, qwen_path, tokenizer_path, **overrides)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or qwen_path, trust_remote_code=False)
    return model, MavorsProcessor.from_config(model.config, tokenizer)
