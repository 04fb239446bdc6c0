"""Visual token compression across adjacent video chunks (paper §5.4; inference only, off by default).

Before the inter-chunk aggregator, the token at index i of chunk c is compared (cosine similarity)
with the token at the same index of chunk c-1. Above the threshold it is merged into the group that
holds its predecessor: the group's feature becomes the average of its members and keeps the
position id (C-RoPE chunk id) of its first, earliest member. Chains merge transitively, so a static
region of a video becomes one token. Kept tokens stay in chunk-major, index-minor order.

    merged = merge_adjacent_chunk_tokens(features, chunk_positions, threshold=0.9)
    merged.tokens, merged.positions, merged.ratio   # ratio = fraction of tokens removed
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass
class CompressedChunks:
    tokens: torch.Tensor
    """(K, d) kept (possibly averaged) tokens."""
    positions: torch.Tensor
    """(K,) C-RoPE position of each kept token (its group's earliest chunk)."""
    ratio: float
    """1 - K / (c * n): fraction of the tokens removed."""


def merge_adjacent_chunk_tokens(features: torch.Tensor, chunk_positions: torch.Tensor,
                                threshold: float) -> CompressedChunks:
    """features (c, n, d) tokens of c chunks of one video; chunk_positions (c,) -> CompressedChunks."""
    c, n, d = features.shape
    sim = F.cosine_similarity(features[1:].float(), features[:-1].float(), dim=-1)  # (c-1, n)
    merged = torch.cat([torch.zeros(1, n, dtype=torch.bool, device=features.device), sim > threshold])  # (c, n)
    # group[c, i] = the chunk where token i's run of merges started (its first member)
    chunk_idx = torch.arange(c, device=features.device)[:, None].expand(c, n)
    starts = torch.where(merged, torch.zeros_like(chunk_idx), chunk_idx)
    group_chunk = torch.cummax(starts, dim=0).values  # (c, n)
    group_id = group_chunk * n + torch.arange(n, device=features.device)  # unique per (start chunk, index)
    sums = torch.zeros(c * n, d, dtype=torch.float32, device=features.device)
    sums.index_add_(0, group_id.flatten(), features.reshape(c * n, d).float())
    counts = torch.bincount(group_id.flatten(), minlength=c * n)
    keep = ~merged.flatten()  # group heads, chunk-major order == order of group_id
    tokens = (sums[keep] / counts[keep, None]).to(features.dtype)
    positions = chunk_positions[:, None].expand(c, n).flatten()[keep]
    return CompressedChunks(tokens=tokens, positions=positions, ratio=1.0 - tokens.shape[0] / (c * n))
