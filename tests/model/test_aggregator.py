"""IFA with C-RoPE (Eq. 4) against a hand computation with explicit rotation matrices, plus its
relative-position, causality and sequence-independence properties."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.model.conftest import randomize_


@pytest.fixture(scope="module")
def ifa(mavors):
    """The tiny IFA with every weight random (the shipped init zeroes the residual outputs)."""
    return randomize_(copy.deepcopy(mavors.ifa), seed=3).eval()


def rotation(position: float, head_dim: int, theta: float) -> torch.Tensor:
    """RoPE matrix R(m) acting on column vectors, dims paired as (i, i + d/2)."""
    half = head_dim // 2
    r = torch.zeros(head_dim, head_dim, dtype=torch.float64)
    for i in range(half):
        angle = position * theta ** (-2 * i / head_dim)
        c, s = math.cos(angle), math.sin(angle)
        r[i, i], r[i, i + half], r[i + half, i], r[i + half, i + half] = c, -s, s, c
    return r


def layer_by_hand(layer, x: torch.Tensor, positions: list[int], theta: float) -> torch.Tensor:
    """One pre-norm layer in float64: x (L, d); causal softmax(q_l R(c_l) . k_l' R(c_l') / sqrt(hd)) v."""
    layer = copy.deepcopy(layer).double()
    attn = layer.attn
    heads, hd = attn.num_heads, attn.head_dim
    h = layer.norm1(x)
    q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)  # (L, d)
    rots = [rotation(p, hd, theta) for p in positions]
    outs = []
    for head in range(heads):
        sl = slice(head * hd, (head + 1) * hd)
        qr = torch.stack([rots[i] @ q[i, sl] for i in range(len(positions))])
        kr = torch.stack([rots[i] @ k[i, sl] for i in range(len(positions))])
        logits = qr @ kr.T / math.sqrt(hd)
        logits = logits.masked_fill(torch.ones_like(logits, dtype=torch.bool).triu(1), float("-inf"))
        outs.append(torch.softmax(logits, -1) @ v[:, sl])
    x = x + attn.o_proj(torch.cat(outs, -1))
    return x + layer.fc2(layer.act(layer.fc1(layer.norm2(x))))


def test_ifa_matches_hand_computed_c_rope(ifa, mavors):
    positions = [0, 0, 0, 2, 2, 5]  # three chunks (ids with gaps), tokens of a chunk share their id
    x = torch.randn(6, ifa.layers[0].norm1.normalized_shape[0], generator=torch.Generator().manual_seed(0))
    expected = x.double()
    for layer in ifa.layers:
        expected = layer_by_hand(layer, expected, positions, mavors.config.ifa_rope_theta)
    with torch.no_grad():
        got = ifa(x, torch.tensor(positions), torch.zeros(6, dtype=torch.long))
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-4)


def test_attention_depends_only_on_chunk_difference(ifa):
    x = torch.randn(8, ifa.layers[0].norm1.normalized_shape[0])
    seq = torch.zeros(8, dtype=torch.long)
    pos = torch.tensor([0, 0, 1, 1, 3, 3, 4, 4])
    with torch.no_grad():
        base = ifa(x, pos, seq)
        shifted = ifa(x, pos + 7, seq)          # same differences
        moved = ifa(x, torch.tensor([0, 0, 1, 1, 2, 2, 4, 4]), seq)  # one difference changed
    torch.testing.assert_close(shifted, base, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(moved[4:], base[4:], atol=1e-3)
    torch.testing.assert_close(moved[:4], base[:4])  # earlier chunks unaffected (causal)


def test_changing_a_later_chunk_leaves_earlier_chunks(ifa):
    x = torch.randn(9, ifa.layers[0].norm1.normalized_shape[0])
    pos = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    seq = torch.zeros(9, dtype=torch.long)
    y = x.clone()
    y[6:] += 1.0
    with torch.no_grad():
        a, b = ifa(x, pos, seq), ifa(y, pos, seq)
    torch.testing.assert_close(a[:6], b[:6])
    assert not torch.allclose(a[6:], b[6:], atol=1e-3)


def test_sub_images_are_aggregated_independently(ifa):
    d = ifa.layers[0].norm1.normalized_shape[0]
    x = torch.randn(10, d)
    pos = torch.zeros(10, dtype=torch.long)         # every sub-image is one chunk at position 0
    seq = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    y = x.clone()
    y[4:7] = torch.randn(3, d)                       # change sub-image 1 only
    with torch.no_grad():
        a, b = ifa(x, pos, seq), ifa(y, pos, seq)
        alone = [ifa(x[s], pos[s], torch.zeros(int(s.sum()), dtype=torch.long)) for s in (seq == 0, seq == 2)]
    torch.testing.assert_close(b[:4], a[:4])
    torch.testing.assert_close(b[7:], a[7:])
    torch.testing.assert_close(a[:4], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[7:], alone[1], atol=1e-5, rtol=1e-5)


def test_fresh_ifa_is_identity(mavors):
    x = torch.randn(5, mavors.config.vision_config.hidden_size)
    with torch.no_grad():
        out = mavors.ifa(x, torch.tensor([0, 0, 1, 1, 2]), torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(out, x)


def test_every_token_gets_its_chunks_position(mavors, processor):
    """Through the model: a 3-chunk video's tokens reach the IFA with ids [0]*n + [5]*n + [10]*n."""
    import numpy as np

    video = np.random.default_rng(0).integers(0, 255, (12, 64, 64, 3), dtype=np.uint8)
    sample = processor.encode([{"from": "human", "value": "<video>"}], [video])
    seen = {}
    hook = mavors.ifa.register_forward_hook(lambda m, args, out: seen.update(pos=args[1], seq=args[2]))
    try:
        with torch.no_grad():
            mavors.encode_visual(sample["pixel_values"], sample["chunk_grids"], torch.tensor([0, 5, 10]),
                                 sample["chunk_sequences"])
    finally:
        hook.remove()
    n = 4  # 64x64 at R_v=64 -> 4x4 patches -> 2x2 pooled
    assert seen["pos"].tolist() == [0] * n + [5] * n + [10] * n
    assert seen["seq"].tolist() == [0] * 3 * n
