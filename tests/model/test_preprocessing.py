"""Preprocessing rules of §3.5 against numbers worked by hand (R_v = 384, patch 14, 9 sub-images max).

Rounding: x / 14 + 0.5, floored, times 14.  Eq. 8: N_s = floor(W*H / 384^2), candidates m*n in
{N_s-1, N_s, N_s+1} (1x1 excluded), argmin |log(W/H) - log(m/n)|."""
from __future__ import annotations

import pytest

from model.preprocessing import (
    ImagePlan, MediaError, check_encodable, dynamic_resolution, image_partition, plan_video, pooled_grid,
    resample_times,
)

R, P = 384, 14

HAND_WORKED = [
    # exactly R_v^2: N_s = 1 -> no partition; not larger than R_v^2 -> kept, 384/14 = 27.43 -> 27 patches
    ((384, 384), ImagePlan((378, 378), None, None)),
    # 1920x1080: N_s = 2073600 // 147456 = 14, capped to 9 -> counts 8, 9: |log(16/9) - log 2| = 0.12 (4x2)
    # beats 3x3 (0.58); sub 480x540 > R_v^2 -> 384*sqrt(8/9) = 362.0 -> 25.9 -> 26, 384*sqrt(9/8) = 407.3 -> 29.1 -> 29;
    # thumb 384*4/3 = 512 -> 36.6 -> 37 patches, 384*3/4 = 288 -> 20.6 -> 21
    ((1920, 1080), ImagePlan((518, 294), (4, 2), (364, 406))),
    # very wide 4000x300: N_s = 8; log(13.33) = 2.59, best 9x1 (log 9 = 2.20); sub 444.4x300 -> 31.7 -> 32, 21.4 -> 21;
    # thumb 384*sqrt(13.33) = 1402.2 -> 100.2 -> 100 patches, 384/sqrt(13.33) = 105.2 -> 7.51 -> 8 patches
    ((4000, 300), ImagePlan((1400, 112), (9, 1), (448, 294))),
    # very tall: the transpose
    ((300, 4000), ImagePlan((112, 1400), (1, 9), (294, 448))),
    # tiny 20x20: N_s = 0, kept: 20/14 = 1.43 -> 1 patch
    ((20, 20), ImagePlan((14, 14), None, None)),
    # 800x600: N_s = 3; log(4/3) = 0.29, 2x2 (0) beats 2x1 (0.69); sub 400x300 -> 28.6 -> 29, 21.4 -> 21;
    # thumb 443.4 -> 31.7 -> 32, 332.6 -> 23.75 -> 24
    ((800, 600), ImagePlan((448, 336), (2, 2), (406, 294))),
    # 2 R_v^2 = 768x384: N_s = 2, candidates 2, 3 (1 excluded) -> 2x1 exactly; sub 384x384 (= R_v^2) -> 27x27;
    # thumb 384*sqrt(2) = 543.1 -> 38.8 -> 39, 271.5 -> 19.4 -> 19
    ((768, 384), ImagePlan((546, 266), (2, 1), (378, 378))),
    # 4000x4000: N_s = 108 capped to 9 -> counts 8, 9 -> 3x3; sub 1333^2 > R_v^2 -> dynamic (384, 384) -> 27
    ((4000, 4000), ImagePlan((378, 378), (3, 3), (378, 378))),
]


@pytest.mark.parametrize(("size", "expected"), HAND_WORKED, ids=[f"{w}x{h}" for (w, h), _ in HAND_WORKED])
def test_image_partition_hand_worked(size, expected):
    assert image_partition(*size, r_v=R, patch=P, max_sub_images=9) == expected


def test_1920x1080_without_cap_and_its_visual_tokens():
    """Cap 16: N_s = 14, counts 13..15: |log(16/9) - log(5/3)| = 0.065 beats 7x2 (0.68) -> 5x3; sub 384x360
    (<= R_v^2, kept) -> 27.4 -> 27, 25.7 -> 26 patches. Tokens: thumbnail 37x21 patches -> 19x11 = 209 pooled,
    15 sub-images of 27x26 -> 14x13 = 182 each."""
    plan = image_partition(1920, 1080, R, P, max_sub_images=16)
    assert plan == ImagePlan((518, 294), (5, 3), (378, 364))
    grids = [(plan.thumbnail[1] // P, plan.thumbnail[0] // P)] + [(plan.sub_image[1] // P, plan.sub_image[0] // P)] * 15
    tokens = sum(a * b for a, b in (pooled_grid(h, w, 2) for h, w in grids))
    assert tokens == 209 + 15 * 182 == 2939


def test_pooled_grid_of_so400m_is_14x14():
    assert pooled_grid(27, 27, 2) == (14, 14)


@pytest.mark.parametrize(("wh", "expected"), [
    ((640, 360), (518, 294)),   # 384*sqrt(16/9) = 512 -> 36.6 -> 37 patches; 288 -> 20.6 -> 21
    ((384, 384), (378, 378)),   # videos are always rescaled to R_v^2 pixels
    ((100, 100), (378, 378)),   # ... including upscaling
    ((80, 48), (80, 48)),       # tiny config R_v=64, p=16: 64*sqrt(5/3) = 82.6 -> 5.2 -> 5; 49.6 -> 3.1 -> 3
])
def test_dynamic_resolution(wh, expected):
    r_v, p = (64, 16) if wh == (80, 48) else (R, P)
    assert dynamic_resolution(*wh, r_v=r_v, patch=p) == expected


def test_image_smaller_than_a_patch_is_refused():
    with pytest.raises(MediaError, match="img.png: 10x30 is smaller than one 14x14 patch") as e:
        image_partition(10, 30, R, P, name="img.png")
    assert (e.value.reason, e.value.detail) == ("image_too_small", "img.png: 10x30 is smaller than one 14x14 patch")


@pytest.mark.parametrize("kind, w, h, n_frames, reason", [
    ("image", 1, 1, None, "image_too_small"), ("image", 8, 8, None, "image_too_small"),
    ("image", 4000, 3, None, "image_too_small"), ("image", 3, 4000, None, "image_too_small"),
    ("image", 13, 4000, None, "image_too_small"), ("video", 8, 8, 30, "video_too_small"),
    ("video", 64, 48, 0, "empty_video"),
    ("image", 14, 14, None, None), ("image", 4000, 14, None, None), ("video", 14, 600, 1, None),
])
def test_encodable_means_one_patch_on_either_side_and_a_frame(kind, w, h, n_frames, reason):
    """Patch 14: a side of 13 px is refused, 14 px is one patch. What passes also gets a plan from the processor's
    resize rule with every side >= 1 patch, so nothing between this check and the encoder refuses it."""
    if reason is None:
        check_encodable(kind, w, h, P, "m", n_frames)
        assert min(dynamic_resolution(w, h, R, P)) >= P and min(image_partition(w, h, R, P).thumbnail) >= P
        return
    with pytest.raises(MediaError) as e:
        check_encodable(kind, w, h, P, "m", n_frames)
    assert e.value.reason == reason and e.value.detail.startswith("m: ")


def test_short_video_chunks_and_last_chunk_padding():
    """10 frames, F=4: c_V = ceil(10/4) = 3; the last chunk repeats frame 9 twice."""
    plan = plan_video(10, frames_per_chunk=4, max_chunks=8)
    assert plan.frame_indices == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9]
    assert plan.chunk_positions == [0, 1, 2]
    assert not plan.dropped


def test_frame_dropping_keeps_original_timeline():
    """100 frames, F=4, max 5 chunks -> keep 20 at round(i*99/19): chunk starts i=0,4,8,12,16 ->
    0, 20.84->21, 41.68->42, 62.53->63, 83.37->83 -> C-RoPE ids floor(/4) = 0, 5, 10, 15, 20."""
    plan = plan_video(100, frames_per_chunk=4, max_chunks=5)
    assert plan.dropped and len(plan.frame_indices) == 20
    assert plan.frame_indices[:6] == [0, 5, 10, 16, 21, 26]
    assert plan.frame_indices[-1] == 99
    assert plan.chunk_positions == [0, 5, 10, 15, 20]


def test_frame_dropping_uneven_gaps():
    """50 frames, F=4, max 3 -> 12 kept at round(i*49/11); starts i=4: 17.8->18, i=8: 35.6->36 -> ids 0, 4, 9."""
    plan = plan_video(50, frames_per_chunk=4, max_chunks=3)
    assert plan.chunk_positions == [0, 4, 9]


def test_resample_times_and_empty_video():
    assert resample_times(2.0, 2.0) == [0.0, 0.5, 1.0, 1.5]
    assert resample_times(0.1, 2.0) == [0.0]  # a very short clip still gives one frame
    with pytest.raises(MediaError, match="clip.mp4: video has no frames") as e:
        plan_video(0, 4, 8, name="clip.mp4")
    assert e.value.reason == "empty_video"
