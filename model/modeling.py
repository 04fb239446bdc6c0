"""`MavorsForConditionalGeneration`: IVE -> IFA -> MLP projector -> Qwen2 LLM (paper §3, Fig. 4).

Submodules are named ``ive``, ``ifa``, ``projector`` and ``llm`` so trainers can freeze them and give
them their own learning rates (stage 1 trains ifa+projector, stage 1.5 all but llm, stage 2 all).
Visual tokens replace the ``<|image_pad|>`` / ``<|video_pad|>`` placeholders of ``input_ids`` in
order of appearance (row-major over the batch), exactly as many as the processor wrote.

    model = MavorsForConditionalGeneration.from_pretrained("mavors-work/models/mavors")
    out = model(**batch)                          # batch from MavorsProcessor; out.loss if labels
    ids = model.generate(**batch, max_new_tokens=32)   # prompt + new tokens: ids[:, batch['input_ids'].shape[1]:]
    emb = model.get_inputs_embeds(**batch)        # LLM inputs for vLLM prompt embeddings (App. B)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel, Qwen2ForCausalLM
from transformers import initialization as init
from transformers.activations import ACT2FN

from model.aggregator import InterChunkFeatureAggregator
from model.compression import merge_adjacent_chunk_tokens
from model.configuration import MavorsConfig
from model.preprocessing import pooled_grid
from model.vision import IntraChunkVisionEncoder

VISUAL_INPUT_KEYS = ("pixel_values", "chunk_grids", "chunk_positions", "chunk_sequences", "chunk_frames")


class MavorsProjector(nn.Module):
    """2-layer MLP from the vision width to the LLM width (modality alignment)."""

    def __init__(self, config: MavorsConfig):
        super().__init__()
        d_t = config.text_config.hidden_size
        self.fc1 = nn.Linear(config.vision_config.hidden_size, d_t)
        self.act = ACT2FN[config.projector_hidden_act]
        self.fc2 = nn.Linear(d_t, d_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


@dataclass
class VisualEncoding:
    tokens: torch.Tensor
    """(T, d_text) projected visual tokens, sequence-major."""
    sequence_counts: list[int]
    """Tokens per IFA sequence as the processor counted them (before compression)."""
    kept_counts: list[int]
    """Tokens per IFA sequence after compression (== sequence_counts when off)."""

    @property
    def compression_ratio(self) -> float:
        total = sum(self.sequence_counts)
        return 1.0 - sum(self.kept_counts) / total if total else 0.0


@dataclass
class MavorsInputs:
    inputs_embeds: torch.Tensor
    """(B, L, d_text) LLM input embeddings with visual tokens spliced in."""
    attention_mask: torch.Tensor
    """(B, L) 1 for real positions."""
    input_ids: torch.Tensor
    """(B, L) token ids (placeholder ids at visual positions; shortened if compression merged tokens)."""
    visual_mask: torch.Tensor
    """(B, L) True where the embedding is a visual token, not a token's embedding."""
    compression_ratio: float
    """Fraction of visual tokens removed by §5.4 compression (0 when off)."""

    def unpadded(self) -> list[dict[str, torch.Tensor]]:
        """Per sample, without padding: prompt_embeds (L_i, d), prompt_token_ids (L_i,),
        is_token (L_i,) -- the shape vLLM's prompt-embeds input expects."""
        rows = []
        for b in range(self.inputs_embeds.shape[0]):
            keep = self.attention_mask[b].bool()
            rows.append({"prompt_embeds": self.inputs_embeds[b][keep],
                         "prompt_token_ids": self.input_ids[b][keep],
                         "is_token": ~self.visual_mask[b][keep]})
        return rows


class MavorsPreTrainedModel(PreTrainedModel):
    config: MavorsConfig
    config_class = MavorsConfig
    base_model_prefix = "mavors"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SiglipEncoderLayer", "InterChunkLayer", "Qwen2DecoderLayer"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module):
        if getattr(module, "zero_init", False):
            # IFA residual outputs start closed: a fresh IFA is the identity (§3.3 initial behaviour).
            # Guarded init functions: weights loaded from a checkpoint are left alone.
            init.zeros_(module.weight)
            init.zeros_(module.bias)
            return
        super()._init_weights(module)


class MavorsForConditionalGeneration(MavorsPreTrainedModel):
    def __init__(self, config: MavorsConfig):
        super().__init__(config)
        config.validate_mavors()
        self.ive = IntraChunkVisionEncoder(config)
        self.ifa = InterChunkFeatureAggregator(config)
        self.projector = MavorsProjector(config)
        self.llm = Qwen2ForCausalLM(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.llm.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.llm.get_output_embeddings()

    # ---- vision path -------------------------------------------------------------------------
    def encode_visual(self, pixel_values: torch.Tensor, chunk_grids: torch.Tensor, chunk_positions: torch.Tensor,
                      chunk_sequences: torch.Tensor, compression_threshold: float | None = None,
                      chunk_frames: torch.Tensor | None = None) -> VisualEncoding:
        """Packed chunks -> projected visual tokens.

        pixel_values (P, C*F*p*p); chunk_grids (N, 2) patch grid (h, w); chunk_positions (N,) C-RoPE
        ids; chunk_sequences (N,) IFA sequence of each chunk (non-decreasing). With chunk_frames (N,), pixel_values
        are the processor's frame rows (R, C*p*p) (:mod:`model.processing`), made into tubelets here, on the device.
        """
        feats = self.ive(pixel_values, chunk_grids, chunk_frames)  # (T, d_V)
        per_chunk = torch.tensor([a * b for a, b in (pooled_grid(h, w, self.config.pooling_size)
                                                     for h, w in chunk_grids.tolist())], device=feats.device)
        positions = chunk_positions.repeat_interleave(per_chunk)  # (T,)
        sequences = chunk_sequences.repeat_interleave(per_chunk)  # (T,)
        seq_counts = torch.unique_consecutive(sequences, return_counts=True)[1].tolist()
        kept_counts = list(seq_counts)
        if compression_threshold is not None and feats.shape[0]:
            feats, positions, sequences, kept_counts = self._compress(
                feats, positions, chunk_sequences, per_chunk, compression_threshold)
        tokens = self.projector(self.ifa(feats, positions, sequences))
        return VisualEncoding(tokens=tokens, sequence_counts=seq_counts, kept_counts=kept_counts)

    def _compress(self, feats, positions, chunk_sequences, per_chunk, threshold):
        """§5.4 merging inside every multi-chunk sequence whose chunks share one grid (videos).
        Returns tokens, positions, sequence ids (T', ...) and the kept count per sequence."""
        chunks_per_seq = torch.unique_consecutive(chunk_sequences, return_counts=True)[1].tolist()
        chunk_sizes = per_chunk.split(chunks_per_seq)
        tokens_per_seq = [int(sizes.sum()) for sizes in chunk_sizes]
        out_f, out_p, out_s = [], [], []
        for seq, (f, p, sizes) in enumerate(zip(feats.split(tokens_per_seq), positions.split(tokens_per_seq),
                                                chunk_sizes)):
            if len(sizes) > 1 and bool((sizes == sizes[0]).all()):
                n = int(sizes[0])
                merged = merge_adjacent_chunk_tokens(f.view(len(sizes), n, -1), p[::n], threshold)
                f, p = merged.tokens, merged.positions
            out_f.append(f)
            out_p.append(p)
            out_s.append(torch.full_like(p, seq))
        return torch.cat(out_f), torch.cat(out_p), torch.cat(out_s), [f.shape[0] for f in out_f]

    def _trains_visual(self) -> bool:
        """Training with autograd while some parameter of the vision path (IVE, IFA, projector) trains."""
        return self.training and torch.is_grad_enabled() and any(
            p.requires_grad for m in (self.ive, self.ifa, self.projector) for p in m.parameters())

    def _zero_contribution_visual(self) -> torch.Tensor:
        """0.0 x the projected tokens of one all-zero single-patch chunk: a scalar that is exactly 0 and whose
        gradient reaches every vision-path parameter (with value 0). A text-only batch in training adds it to its
        token embeddings, so it enters every loss computed from the logits (next-token, DPO).

        A text-only batch would otherwise leave IVE/IFA/projector out of the backward pass. Under DeepSpeed
        ZeRO-2 every rank fills its gradient buckets parameter by parameter as their gradient hooks fire, then
        reduces them slice by slice; a rank that skips the vision modules reduces other slices than its peers
        (gloo: "collective mismatch", NCCL: a hang until the timeout). DeepSpeed has no counterpart of DDP's
        ``find_unused_parameters``, so every rank runs every trainable module on every micro-step instead; the
        chunk is computed before the token embeddings, as real media are, so hooks fire in the same order on
        every rank. Forward values and the other gradients are unchanged bit for bit (x + 0.0 == x)."""
        device, dtype = self.projector.fc1.weight.device, self.ive.patch_embedding.weight.dtype
        pixels = torch.zeros(1, self.ive.tubelet_size, device=device, dtype=dtype)  # (1 patch, C*F*p*p)
        one = torch.ones(1, 2, dtype=torch.long, device=device)  # chunk grid (h, w) = (1, 1)
        zero = torch.zeros(1, dtype=torch.long, device=device)  # C-RoPE position 0, IFA sequence 0
        return self.encode_visual(pixels, one, zero, zero).tokens.sum() * 0.0

    def get_inputs_embeds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          pixel_values: torch.Tensor | None = None, chunk_grids: torch.Tensor | None = None,
                          chunk_positions: torch.Tensor | None = None, chunk_sequences: torch.Tensor | None = None,
                          compression_threshold: float | None = None, chunk_frames: torch.Tensor | None = None,
                          **_: object) -> MavorsInputs:
        """LLM input embeddings with the visual tokens spliced into the placeholder positions.

        compression_threshold defaults to config.token_compression_threshold (None = off); when
        compression removes tokens, the placeholder runs are shortened and rows re-padded on the
        same side. Extra batch keys (labels, ...) are ignored so ``get_inputs_embeds(**batch)`` works.
        """
        if compression_threshold is None:
            compression_threshold = self.config.token_compression_threshold
        return self._splice(input_ids, attention_mask, pixel_values, chunk_grids, chunk_positions, chunk_sequences,
                            compression_threshold, chunk_frames)

    def _splice(self, input_ids, attention_mask, pixel_values, chunk_grids, chunk_positions, chunk_sequences,
                threshold: float | None, chunk_frames: torch.Tensor | None = None) -> MavorsInputs:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        visual_mask = (input_ids == self.config.image_token_id) | (input_ids == self.config.video_token_id)
        n_placeholders = int(visual_mask.sum())
        if pixel_values is None or pixel_values.shape[0] == 0:
            if n_placeholders:
                raise ValueError(f"input_ids hold {n_placeholders} visual placeholders but no pixel_values were given")
            zero = self._zero_contribution_visual() if self._trains_visual() else None
            embeds = self.get_input_embeddings()(input_ids)  # after the visual graph, as on the visual path
            if zero is not None:
                embeds = embeds + zero.to(embeds.dtype)
            return MavorsInputs(embeds, attention_mask, input_ids, visual_mask, 0.0)
        visual = self.encode_visual(pixel_values, chunk_grids, chunk_positions, chunk_sequences, threshold,
                                    chunk_frames)
        if n_placeholders != sum(visual.sequence_counts):
            raise ValueError(f"input_ids hold {n_placeholders} visual placeholders but the media produce "
                             f"{sum(visual.sequence_counts)} visual tokens (processor/model config mismatch?)")
        if visual.kept_counts != visual.sequence_counts:
            pad_id = self.config.text_config.pad_token_id or 0
            input_ids, attention_mask = shorten_placeholder_runs(
                input_ids, attention_mask, visual_mask, visual.sequence_counts, visual.kept_counts, pad_id)
            visual_mask = (input_ids == self.config.image_token_id) | (input_ids == self.config.video_token_id)
            visual_mask &= attention_mask.bool()
        embeds = self.get_input_embeddings()(input_ids)  # (B, L, d)
        embeds = embeds.masked_scatter(visual_mask[..., None], visual.tokens.to(embeds.dtype))
        return MavorsInputs(embeds, attention_mask, input_ids, visual_mask, visual.compression_ratio)

    # ---- LLM ---------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, chunk_grids: torch.Tensor | None = None,
                chunk_positions: torch.Tensor | None = None, chunk_sequences: torch.Tensor | None = None,
                chunk_frames: torch.Tensor | None = None, **kwargs):
        """Causal-LM forward; with ``labels`` (-100 outside answer tokens) returns the shifted
        next-token loss. Token compression is never applied here (it would break label alignment).

        Packed rows (:mod:`trainers.packing`: several samples in one row) come with ``position_ids`` restarting at
        0 at every sample and no ``attention_mask``: the LLM's mask builder then keeps each token's attention inside
        its sample (block-diagonal causal mask for sdpa/eager, variable-length kernels for flash attention), and
        RoPE sees each sample's own positions. The IFA needs nothing: ``chunk_sequences`` already separate the
        samples' media. The mask is passed on as given, so None stays None, and such a call makes no KV cache
        (transformers only reads packing from ``position_ids`` when there is none)."""
        if inputs_embeds is None:
            inputs_embeds = self._splice(input_ids, attention_mask, pixel_values, chunk_grids, chunk_positions,
                                         chunk_sequences, threshold=None, chunk_frames=chunk_frames).inputs_embeds
        if attention_mask is None and kwargs.get("position_ids") is not None:
            kwargs.setdefault("use_cache", False)
        return self.llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 pixel_values: torch.Tensor | None = None, chunk_grids: torch.Tensor | None = None,
                 chunk_positions: torch.Tensor | None = None, chunk_sequences: torch.Tensor | None = None,
                 compression_threshold: float | None = None, labels: torch.Tensor | None = None,
                 chunk_frames: torch.Tensor | None = None, **generate_kwargs):
        """Generate from a (left-padded for batches) processor batch; returns the prompt's ``input_ids`` followed
        by the new tokens, (B, L + n_new), as transformers' generate does, so ``out[:, input_ids.shape[1]:]``
        are the new ones (the LLM, prompted by embeddings, returns only those; with token compression the
        prompt it saw was shorter, but the ids returned are the ones given)."""
        mi = self.get_inputs_embeds(input_ids, attention_mask, pixel_values, chunk_grids, chunk_positions,
                                    chunk_sequences, compression_threshold, chunk_frames)
        new = self.llm.generate(inputs_embeds=mi.inputs_embeds, attention_mask=mi.attention_mask, **generate_kwargs)
        prompt = input_ids.repeat_interleave(new.shape[0] // input_ids.shape[0], dim=0)  # num_return_sequences
        return torch.cat([prompt, new.to(prompt.device)], dim=1)


def _register_auto_classes() -> None:
    """Make AutoModelForImageTextToText resolve model_type "mavors" (no remote code; AutoConfig is registered with
    the config class); done where the model class is defined, so whatever can build the model can also load it
    through the Auto classes."""
    from transformers import AutoModelForImageTextToText

    AutoModelForImageTextToText.register(MavorsConfig, MavorsForConditionalGeneration, exist_ok=True)


_register_auto_classes()


def shorten_placeholder_runs(input_ids: torch.Tensor, attention_mask: torch.Tensor, visual_mask: torch.Tensor,
                             old_counts: list[int], new_counts: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrink each placeholder run to the compressed token count and re-pad the rows.

    Runs are matched to IFA sequences in order: a run of k placeholders consumes sequences until
    their original counts sum to k (an image's thumbnail + sub-images share one run).
    """
    left_padded = bool((attention_mask[:, 0] == 0).any()) and bool((attention_mask[:, -1] == 1).all())
    rows, masks, seq = [], [], 0
    for b in range(input_ids.shape[0]):
        ids, vis, am = input_ids[b].tolist(), visual_mask[b].tolist(), attention_mask[b].tolist()
        new_ids, i = [], 0
        while i < len(ids):
            if not am[i]:  # padding is dropped and rebuilt below
                i += 1
                continue
            if not vis[i]:
                new_ids.append(ids[i])
                i += 1
                continue
            j = i
            while j < len(ids) and vis[j] and ids[j] == ids[i]:
                j += 1
            run, kept = j - i, 0
            while run > 0:
                run -= old_counts[seq]
                kept += new_counts[seq]
                seq += 1
            if run != 0:
                raise ValueError("a placeholder run does not align with the visual sequences")
            new_ids.extend([ids[i]] * kept)
            i = j
        rows.append(new_ids)
    width = max(len(r) for r in rows)
    out_ids = input_ids.new_full((len(rows), width), pad_id)
    out_mask = attention_mask.new_zeros((len(rows), width))
    for b, r in enumerate(rows):
        sl = slice(width - len(r), width) if left_padded else slice(0, len(r))
        out_ids[b, sl] = torch.tensor(r, dtype=input_ids.dtype)
        out_mask[b, sl] = 1
    return out_ids, out_mask
