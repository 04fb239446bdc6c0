"""§5.4 token compression: a hand-worked merge, and the model shortening a static video's tokens."""
from __future__ import annotations

import numpy as np
import torch

from model.compression import merge_adjacent_chunk_tokens


def test_merge_hand_worked():
    """3 chunks x 2 tokens, threshold 0.9. Index 0: a0=(1,0), a1=(1,.1) (cos .995), a2=(1,.05) (cos vs a1 .9987)
    -> one group, mean (1, .05), id of chunk 0. Index 1: b0=(0,1); b1=(1,0) (cos 0, kept); b2=(1,.01) (cos vs b1
    .99995) -> group {b1, b2}, mean (1, .005), id of chunk 1. Kept (chunk-major): a-group, b0, b-group; ratio 1/2."""
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0]],
                          [[1.0, 0.1], [1.0, 0.0]],
                          [[1.0, 0.05], [1.0, 0.01]]])
    out = merge_adjacent_chunk_tokens(feats, torch.tensor([0, 3, 7]), threshold=0.9)
    torch.testing.assert_close(out.tokens, torch.tensor([[1.0, 0.05], [0.0, 1.0], [1.0, 0.005]]))
    assert out.positions.tolist() == [0, 0, 3]
    assert out.ratio == 0.5


def test_merge_nothing_above_threshold():
    feats = torch.eye(3)[None].repeat(2, 1, 1)
    feats[1] = feats[1].roll(1, dims=0)  # every token orthogonal to its predecessor
    out = merge_adjacent_chunk_tokens(feats, torch.tensor([0, 1]), threshold=0.5)
    assert out.ratio == 0.0 and out.positions.tolist() == [0, 0, 0, 1, 1, 1]
    torch.testing.assert_close(out.tokens, feats.reshape(6, 3))


def test_static_video_collapses_to_one_chunk(mavors, processor):
    """12 identical frames -> 3 identical chunks of 4 tokens: with compression every later token merges
    into chunk 0 (ratio 2/3) and the prompt is 8 embeddings shorter; generation still works."""
    frame = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    video = np.repeat(frame[None], 12, axis=0)
    sample = processor.encode([{"from": "human", "value": "<video>What is it?"}], [video], add_generation_prompt=True)
    batch = processor.collate([sample], padding_side="left")
    with torch.no_grad():
        plain = mavors.get_inputs_embeds(**batch)
        merged = mavors.get_inputs_embeds(**batch, compression_threshold=0.99)
        out = mavors.generate(**batch, compression_threshold=0.99, max_new_tokens=2, do_sample=False)
    assert plain.compression_ratio == 0.0 and plain.visual_mask.sum() == 12
    assert abs(merged.compression_ratio - 2 / 3) < 1e-9 and merged.visual_mask.sum() == 4
    assert merged.inputs_embeds.shape[1] == plain.inputs_embeds.shape[1] - 8
    # the merged tokens are the first chunk's (identical chunks average to themselves)
    torch.testing.assert_close(merged.inputs_embeds[0][merged.visual_mask[0]],
                               plain.inputs_embeds[0][plain.visual_mask[0]][:4], atol=1e-5, rtol=1e-5)
    assert torch.equal(out[:, :batch["input_ids"].shape[1]], batch["input_ids"]) and out.shape[1] > batch["input_ids"].shape[1]
