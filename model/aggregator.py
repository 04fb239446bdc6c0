"""Inter-chunk feature aggregator (IFA, paper §3.4): L_inter causal Transformer layers over the
concatenated chunk features, with chunk-level rotary position encoding (C-RoPE, Eq. 4).

C-RoPE: every token carries the position of its *chunk* (from the chunk's first-frame timestamp,
see `model.preprocessing.plan_video`), so q_l R_{c(l) - c(l')} k_l'^T depends only on the chunk
difference. Attention is causal over the token order of a sequence. Several sequences (a video, or
each sub-image/thumbnail of an image on its own) are aggregated independently: a token never
attends across sequences.

The residual branches' output projections start at zero, so a fresh IFA is the identity and the
freshly initialized model reproduces SigLIP features end to end (§3.3's "initial behavior").

    ifa = InterChunkFeatureAggregator(config)
    out = ifa(tokens, positions, sequence_ids)   # tokens (T, d_V), positions/sequence_ids (T,)
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers.activations import ACT2FN

from model.configuration import MavorsConfig


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """RoPE pairing of dims (i, i + d/2), as in Qwen2/Llama."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class ChunkRotary(nn.Module):
    """cos/sin tables for C-RoPE from integer (or fractional) chunk positions. Frequencies are
    computed on the fly (no buffer: nothing to restore when weights load on the meta device)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, L) -> cos, sin (B, 1, L, head_dim), float32."""
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=positions.device) / self.head_dim
        inv_freq = 1.0 / (self.theta ** exponents)  # (d/2,)
        freqs = positions.float()[..., None] * inv_freq  # (B, L, d/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos()[:, None], emb.sin()[:, None]


class InterChunkAttention(nn.Module):
    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.o_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, L, d); mask (B, 1, L, L) bool (True = may attend) or None for one unpadded sequence."""
        b, n, _ = x.shape
        q, k, v = (proj(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))  # (B, H, L, hd)
        q = (q * cos + rotate_half(q) * sin).to(v.dtype)
        k = (k * cos + rotate_half(k) * sin).to(v.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class InterChunkLayer(nn.Module):
    """Pre-norm Transformer layer (Eqs. 3, 5, 6 + MLP) with C-RoPE causal attention."""

    def __init__(self, width: int, num_heads: int, intermediate: int, act: str, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = InterChunkAttention(width, num_heads)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.fc1 = nn.Linear(width, intermediate)
        self.act = ACT2FN[act]
        self.fc2 = nn.Linear(intermediate, width)
        for residual_out in (self.attn.o_proj, self.fc2):
            residual_out.zero_init = True  # read by MavorsPreTrainedModel._init_weights

    def forward(self, x, cos, sin, mask):
        x = x + self.attn(self.norm1(x), cos, sin, mask)
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class InterChunkFeatureAggregator(nn.Module):
    def __init__(self, config: MavorsConfig):
        super().__init__()
        vc = config.vision_config
        width = vc.hidden_size
        self.rotary = ChunkRotary(width // config.ifa_num_heads, config.ifa_rope_theta)
        self.layers = nn.ModuleList(
            InterChunkLayer(width, config.ifa_num_heads, config.ifa_intermediate_size or vc.intermediate_size,
                            vc.hidden_act, vc.layer_norm_eps)
            for _ in range(config.ifa_num_layers))
        self.gradient_checkpointing = False

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, sequence_ids: torch.Tensor) -> torch.Tensor:
        """tokens (T, d) in sequence order; positions (T,) C-RoPE chunk ids; sequence_ids (T,)
        non-decreasing -> (T, d). Tokens of different sequences never attend to each other."""
        if tokens.shape[0] == 0:
            return tokens
        counts = torch.unique_consecutive(sequence_ids, return_counts=True)[1].tolist()
        x = nn.utils.rnn.pad_sequence(list(tokens.split(counts)), batch_first=True)  # (B, Lmax, d)
        pos = nn.utils.rnn.pad_sequence(list(positions.split(counts)), batch_first=True)  # (B, Lmax)
        mask = None
        if len(counts) > 1:
            lmax = x.shape[1]
            valid = torch.arange(lmax, device=x.device)[None] < torch.tensor(counts, device=x.device)[:, None]
            causal = torch.ones(lmax, lmax, dtype=torch.bool, device=x.device).tril()
            mask = (causal[None] & valid[:, None, :])[:, None]  # (B, 1, L, L); pad rows still see key 0
        cos, sin = self.rotary(pos)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask)
        return torch.cat([x[i, :n] for i, n in enumerate(counts)])
