"""IVE: inflated SigLIP equals transformers' SiglipVisionModel on an image repeated F times (§3.3),
the odd-grid pooling rule, and no autograd when frozen."""
from __future__ import annotations

import pytest
import torch
from transformers import SiglipVisionModel


def tubelets_by_loop(frames: torch.Tensor, p: int) -> torch.Tensor:
    """(F, C, H, W) -> (h*w, C*F*p*p), written patch by patch (independent of the processor's reshape)."""
    rows = []
    for r in range(frames.shape[2] // p):
        for c in range(frames.shape[3] // p):
            rows.append(frames[:, :, r * p:(r + 1) * p, c * p:(c + 1) * p].permute(1, 0, 2, 3).flatten())
    return torch.stack(rows)


@pytest.mark.parametrize("hw", [(64, 64), (48, 96)], ids=["square", "non-square"])
def test_image_repeated_f_times_matches_siglip(mavors, tiny_models, hw):
    siglip = SiglipVisionModel.from_pretrained(tiny_models["siglip"]).eval()
    image = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = siglip(image, interpolate_pos_encoding=True).last_hidden_state[0]  # (h*w, d)
        f, p = mavors.config.frames_per_chunk, mavors.config.patch_size
        tubelets = tubelets_by_loop(image[0][None].expand(f, -1, -1, -1), p)
        grid = torch.tensor([[hw[0] // p, hw[1] // p]])
        got = mavors.ive.encode_unpooled(tubelets, grid)[0]
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_processor_layout_equals_patch_loop(processor):
    frames = torch.randn(processor.frames_per_chunk, 3, 32, 48)
    torch.testing.assert_close(processor.to_tubelets(frames), tubelets_by_loop(frames, processor.patch_size))


def test_frame_rows_make_the_processors_tubelets(mavors, processor):
    """An image chunk's one frame and a video chunk's F frames as frame rows (1/F of the image's values) -> the IVE's
    tubelets equal the patch loop's over the F-fold frames, value for value."""
    f, p = processor.frames_per_chunk, processor.patch_size
    image, video = torch.randn(1, 3, 32, 48), torch.randn(f, 3, 48, 16)
    rows = processor.with_frame_rows()
    packed = torch.cat([rows.to_frame_rows(image), rows.to_frame_rows(video)])
    assert packed.shape == (2 * 3 + 3 * 1 * f, 3 * p * p)
    got = mavors.ive.tubelets(packed, torch.tensor([[2, 3], [3, 1]]), torch.tensor([1, f]))
    expected = torch.cat([tubelets_by_loop(image.expand(f, -1, -1, -1), p), tubelets_by_loop(video, p)])
    assert torch.equal(got, expected)


def test_pooling_odd_grid_averages_existing_patches(mavors):
    """3x5 grid of scalar features 0..14 -> ceil -> 2x3 windows; edge windows average what exists."""
    feats = torch.arange(15.0)[:, None].repeat(1, 4)  # (15, 4), row-major grid [[0..4], [5..9], [10..14]]
    pooled = mavors.ive.pool(feats, 3, 5)[:, 0]
    expected = torch.tensor([
        (0 + 1 + 5 + 6) / 4, (2 + 3 + 7 + 8) / 4, (4 + 9) / 2,   # rows 0-1
        (10 + 11) / 2, (12 + 13) / 2, 14.0,                      # row 2 alone
    ])
    torch.testing.assert_close(pooled, expected)


def test_frozen_ive_runs_without_autograd(mavors_dir):
    from model import MavorsForConditionalGeneration

    model = MavorsForConditionalGeneration.from_pretrained(mavors_dir)
    f, p = model.config.frames_per_chunk, model.config.patch_size
    tub = torch.randn(16, 3 * f * p * p)
    grid = torch.tensor([[4, 4]])
    assert model.ive(tub, grid).requires_grad
    model.ive.requires_grad_(False)
    out = model.ive(tub, grid)
    assert out.shape == (4, model.config.vision_config.hidden_size) and not out.requires_grad
