"""Intra-chunk vision encoder (IVE, paper §3.3): 3D-conv patch embedding over F frames, SigLIP ViT
layers, position embedding resized per chunk grid (Eq. 7), and 2x2 spatial pooling.

Input is *packed*: every chunk is cut into p x p x F tubelets in row-major patch order, flattened to
``C*F*p*p`` values, and all chunks of a batch are concatenated along dim 0 (the layout the
processor emits). ``chunk_grids[i] = (h_i, w_i)`` gives chunk i's patch grid. Chunks of the same
grid are encoded together as one batch (no cross-chunk attention inside the IVE).

    ive = IntraChunkVisionEncoder(config)          # config: MavorsConfig
    pooled = ive(pixel_values, chunk_grids)        # (sum_i ceil(h_i/2)*ceil(w_i/2), d_V)
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers.models.siglip.modeling_siglip import SiglipEncoder

from model.configuration import MavorsConfig


def resize_position_embedding(table: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Eq. 7: E(x, y) = E_v(x * P_v / P_W, y * P_v / P_H), sampled bicubically like SigLIP.

    table: (P_v*P_v, d) pretraining grid -> (h*w, d) for a chunk of h x w patches. The native grid is
    returned unchanged, so a chunk at the pretraining resolution sees SigLIP's exact embeddings.
    """
    side = int(round(table.shape[0] ** 0.5))
    if (h, w) == (side, side):
        return table
    grid = table.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, d, P_v, P_v)
    grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(h * w, -1)


def frame_rows_to_tubelets(pixel_values: torch.Tensor, chunk_grids: torch.Tensor, chunk_frames: torch.Tensor,
                           channels: int, frames: int, patch: int) -> torch.Tensor:
    """The processor's frame-row layout (R, C*p*p), one row per patch per stored frame, ``chunk_frames`` (N,)
    stored frames per chunk (1: an image's frame, repeated F times; F: a video's) -> tubelets (P, C*F*p*p), the
    values the processor's default layout holds (:mod:`model.processing`), on the tensors' device."""
    c, f, pp = channels, frames, patch * patch
    grids, stored = chunk_grids.tolist(), chunk_frames.tolist()
    out = []
    for rows, (h, w), k in zip(pixel_values.split([h * w * k for (h, w), k in zip(grids, stored)]), grids, stored):
        x = rows.view(h * w, k, c, pp).expand(h * w, f, c, pp)  # k == 1: the one frame F times (a view)
        out.append(x.permute(0, 2, 1, 3).reshape(h * w, c * f * pp))  # (patches, C, F, p*p) flattened
    return torch.cat(out) if out else pixel_values.new_zeros(0, c * f * pp)


class IntraChunkVisionEncoder(nn.Module):
    """Per-chunk spatio-temporal features H_i in R^{n_V/4 x d_V} (Eq. 1 + ViT + pooling)."""

    def __init__(self, config: MavorsConfig):
        super().__init__()
        vc = config.vision_config
        self.frames = config.frames_per_chunk
        self.patch = vc.patch_size
        self.channels = vc.num_channels
        self.pooling_size = config.pooling_size
        # kernel == stride: one tubelet of F frames x p x p pixels per token (Eq. 1).
        self.patch_embedding = nn.Conv3d(vc.num_channels, vc.hidden_size,
                                         kernel_size=(self.frames, self.patch, self.patch),
                                         stride=(self.frames, self.patch, self.patch))
        num_positions = (vc.image_size // vc.patch_size) ** 2
        self.position_embedding = nn.Embedding(num_positions, vc.hidden_size)
        if vc._attn_implementation is None:  # standalone SigLIP layers: pick SDPA explicitly
            vc._attn_implementation = "sdpa"
        self.encoder = SiglipEncoder(vc)
        self.post_layernorm = nn.LayerNorm(vc.hidden_size, eps=vc.layer_norm_eps)

    @property
    def tubelet_size(self) -> int:
        """Values per packed patch row: C * F * p * p."""
        return self.channels * self.frames * self.patch * self.patch

    def tubelets(self, pixel_values: torch.Tensor, chunk_grids: torch.Tensor,
                 chunk_frames: torch.Tensor) -> torch.Tensor:
        """:func:`frame_rows_to_tubelets` at this encoder's C, F and p."""
        return frame_rows_to_tubelets(pixel_values, chunk_grids, chunk_frames, self.channels, self.frames, self.patch)

    def embed(self, tubelets: torch.Tensor) -> torch.Tensor:
        """Eq. 1: Conv(C_i) / F.  tubelets (N, C*F*p*p) -> (N, d_V)."""
        x = tubelets.to(self.patch_embedding.weight.dtype)
        x = x.view(-1, self.channels, self.frames, self.patch, self.patch)  # (N, C, F, p, p)
        return self.patch_embedding(x).flatten(1) / self.frames

    def encode_unpooled(self, pixel_values: torch.Tensor, chunk_grids: torch.Tensor) -> list[torch.Tensor]:
        """ViT features before pooling, one (h_i*w_i, d_V) tensor per chunk, in chunk order."""
        sizes = (chunk_grids[:, 0] * chunk_grids[:, 1]).tolist()
        if sum(sizes) != pixel_values.shape[0]:
            raise ValueError(f"pixel_values has {pixel_values.shape[0]} patches, chunk_grids describe {sum(sizes)}")
        tokens = self.embed(pixel_values).split(sizes)  # per chunk (h*w, d_V)
        out: list[torch.Tensor | None] = [None] * len(sizes)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (h, w) in enumerate(chunk_grids.tolist()):
            groups.setdefault((h, w), []).append(i)
        for (h, w), idx in groups.items():
            pos = resize_position_embedding(self.position_embedding.weight, h, w)  # (h*w, d_V)
            x = torch.stack([tokens[i] for i in idx]) + pos  # (n_chunks, h*w, d_V)
            x = self.post_layernorm(self.encoder(inputs_embeds=x).last_hidden_state)
            for j, i in enumerate(idx):
                out[i] = x[j]
        return out  # type: ignore[return-value]

    def pool(self, features: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(h*w, d) -> (ceil(h/k)*ceil(w/k), d), average over k x k windows (rule: model.preprocessing.pooled_grid)."""
        if self.pooling_size == 1:
            return features
        grid = features.t().reshape(1, -1, h, w)  # (1, d, h, w)
        pooled = F.avg_pool2d(grid, self.pooling_size, self.pooling_size, ceil_mode=True)
        return pooled.flatten(2)[0].t()

    def forward(self, pixel_values: torch.Tensor, chunk_grids: torch.Tensor,
                chunk_frames: torch.Tensor | None = None) -> torch.Tensor:
        """pixel_values (P, C*F*p*p), chunk_grids (N, 2) -> pooled tokens (sum_i n_i, d_V), chunk-major. With
        ``chunk_frames`` (N,), pixel_values are frame rows (R, C*p*p), made into tubelets first (:meth:`tubelets`).

        When every parameter is frozen (training stage 1) the encoder runs without autograd.
        """
        if chunk_frames is not None:
            pixel_values = self.tubelets(pixel_values, chunk_grids, chunk_frames)
        if not any(p.requires_grad for p in self.parameters()):
            with torch.no_grad():
                return self._encode(pixel_values, chunk_grids)
        return self._encode(pixel_values, chunk_grids)

    def _encode(self, pixel_values: torch.Tensor, chunk_grids: torch.Tensor) -> torch.Tensor:
        feats = self.encode_unpooled(pixel_values, chunk_grids)
        pooled = [self.pool(f, h, w) for f, (h, w) in zip(feats, chunk_grids.tolist())]
        if not pooled:
            return pixel_values.new_zeros(0, self.post_layernorm.normalized_shape[0])
        return torch.cat(pooled)
