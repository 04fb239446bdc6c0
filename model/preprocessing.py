"""Geometry and timeline rules of Mavors preprocessing (paper §3.5), as pure functions.

- `dynamic_resolution`: (R_v*sqrt(W/H), R_v*sqrt(H/W)) rounded to the patch size (half up, >= 1 patch).
- `image_partition`: Eq. 8 sub-image grid (m columns, n rows) plus the thumbnail size.
- `plan_video`: fixed-fps resampling, frame dropping for long videos, chunks of F frames, C-RoPE ids.

    plan = image_partition(1920, 1080, r_v=384, patch=14)   # ImagePlan(thumb=(518, 294), grid=(5, 3), sub=(378, 364))
    vp = plan_video(n_resampled=100, frames_per_chunk=4, max_chunks=5)
"""
from __future__ import annotations

import math
from dataclasses import dataclass


class MediaError(ValueError):
    """A media item that cannot be used: ``reason`` is a short countable tag (``undecodable_video``,
    ``image_too_small``, ...; curation stores it in the quarantine), ``detail`` names the item and says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def check_encodable(kind: str, width: int, height: int, patch: int, name: str = "media",
                    n_frames: int | None = None) -> None:
    """The one rule of which media Mavors can encode, applied by the processor and by the shard build (so a
    sample the loader would refuse never reaches a shard): an image, or a video's frames, at least one
    ``patch`` on either side, and a video with at least one frame. Anything larger is encodable: the resize
    rules (:func:`fit_resolution`, :func:`dynamic_resolution`) round every side to at least one patch. A 1x1,
    8x8, 4000x3 or 3x4000 image, an 8x8 video: MediaError ``image_too_small`` / ``video_too_small``;
    ``n_frames`` 0: ``empty_video``."""
    if kind == "video" and n_frames is not None and n_frames < 1:
        raise MediaError("empty_video", f"{name}: video has no frames")
    if width < patch or height < patch:
        what = f"{width}x{height} is" if kind == "image" else f"{width}x{height} frames are"
        raise MediaError(f"{kind}_too_small", f"{name}: {what} smaller than one {patch}x{patch} patch")


def round_to_patch(x: float, patch: int) -> int:
    """Nearest multiple of the patch size, halves rounded up, at least one patch."""
    return max(patch, int(math.floor(x / patch + 0.5)) * patch)


def pooled_grid(h: int, w: int, pooling_size: int) -> tuple[int, int]:
    """Pooled grid for a (h, w) patch grid. Odd grids: ceil, the edge window averages what exists
    (so SigLIP-so400m's 27x27 pools to 14x14 = 196 tokens, not 13x13 with a lost row/column)."""
    return -(-h // pooling_size), -(-w // pooling_size)


def dynamic_resolution(width: float, height: float, r_v: int, patch: int) -> tuple[int, int]:
    """§3.5: keep the aspect ratio, match R_v^2 pixels: (R_v*sqrt(W/H), R_v*sqrt(H/W)), patch-rounded."""
    return (round_to_patch(r_v * math.sqrt(width / height), patch),
            round_to_patch(r_v * math.sqrt(height / width), patch))


def fit_resolution(width: float, height: float, r_v: int, patch: int) -> tuple[int, int]:
    """Images: only those with more pixels than R_v^2 are rescaled (§3.5); smaller ones keep their size,
    patch-rounded."""
    if width * height > r_v * r_v:
        return dynamic_resolution(width, height, r_v, patch)
    return round_to_patch(width, patch), round_to_patch(height, patch)


@dataclass(frozen=True)
class ImagePlan:
    thumbnail: tuple[int, int]
    """(width, height) of the thumbnail I_0 fed to the encoder."""
    grid: tuple[int, int] | None
    """(m columns, n rows) of sub-images, None when the image is not partitioned."""
    sub_image: tuple[int, int] | None
    """(width, height) every sub-image is resized to."""


def partition_grid(width: int, height: int, r_v: int, max_sub_images: int) -> tuple[int, int] | None:
    """Eq. 8. N_s = floor(W*H / R_v^2) (capped at max_sub_images); candidates are all (m, n) with
    m*n in {N_s-1, N_s, N_s+1}; pick argmin |log(W/H) - log(m/n)|. As in MiniCPM-V, a 1x1 grid is
    never a candidate (it would repeat the thumbnail), so N_s < 2 means no partition. Ties go to the
    first candidate in (m*n ascending, m ascending) order."""
    n_s = min((width * height) // (r_v * r_v), max_sub_images)
    if n_s < 2:
        return None
    target = math.log(width / height)
    candidates = [(m, count // m) for count in (n_s - 1, n_s, n_s + 1) if 2 <= count <= max_sub_images
                  for m in range(1, count + 1) if count % m == 0]
    return min(candidates, key=lambda mn: abs(target - math.log(mn[0] / mn[1])))


def image_partition(width: int, height: int, r_v: int, patch: int, max_sub_images: int = 9,
                    name: str = "image") -> ImagePlan:
    """Thumbnail size and Eq. 8 partition for a W x H image; MediaError below one patch (:func:`check_encodable`)."""
    check_encodable("image", width, height, patch, name)
    grid = partition_grid(width, height, r_v, max_sub_images)
    sub = fit_resolution(width / grid[0], height / grid[1], r_v, patch) if grid else None
    return ImagePlan(thumbnail=fit_resolution(width, height, r_v, patch), grid=grid, sub_image=sub)


@dataclass(frozen=True)
class VideoPlan:
    frame_indices: list[int]
    """Indices into the resampled (fixed-fps) frame sequence, after frame dropping; the last chunk is
    padded by repeating the last kept frame, so len == n_chunks * F."""
    chunk_positions: list[int]
    """C-RoPE id of each chunk: floor(resampled index of its first frame / F) -- the first frame's
    timestamp in units of chunk length on the original timeline (gaps after frame dropping)."""
    dropped: bool
    """True when frames were dropped (accelerated playback)."""


def plan_video(n_resampled: int, frames_per_chunk: int, max_chunks: int, name: str = "video") -> VideoPlan:
    """Chunking of a video of n_resampled frames at the fixed fps.

    c_V = ceil(T_V / F). If c_V > max_chunks, keep K = max_chunks * F frames at the evenly spaced
    indices round(i * (T_V - 1) / (K - 1)), i = 0..K-1 (first and last frame kept). The last chunk
    is completed by repeating its last frame (a padded frame adds no new content and keeps the
    chunk's first-frame timestamp).
    """
    if n_resampled < 1:
        raise MediaError("empty_video", f"{name}: video has no frames")
    f = frames_per_chunk
    keep_max = max_chunks * f
    if math.ceil(n_resampled / f) > max_chunks:
        indices = [math.floor(i * (n_resampled - 1) / (keep_max - 1) + 0.5) if keep_max > 1 else 0
                   for i in range(keep_max)]
        dropped = True
    else:
        indices = list(range(n_resampled))
        dropped = False
    n_chunks = math.ceil(len(indices) / f)
    indices = indices + [indices[-1]] * (n_chunks * f - len(indices))
    positions = [indices[c * f] // f for c in range(n_chunks)]
    return VideoPlan(frame_indices=indices, chunk_positions=positions, dropped=dropped)


def resampled_frame_count(duration_s: float, fps: float) -> int:
    """Frames of a clip lasting ``duration_s`` resampled to ``fps``: one per instant k / fps inside the clip
    (k / fps < duration, FFmpeg's ``fps`` filter rule), at least one. The one rule of the shard transcoder and
    the processor, so a clip and its shard copy give the same frames and chunks: 4.004 s at 2 fps is 9 frames
    (instants 0 .. 4.0 s), and its 9-frame copy lasts 4.5 s, again 9. The 1e-6 tolerance absorbs float error
    in durations summed from frame timestamps (a 9-frame 2 fps copy measured as 4.5000001 s stays 9)."""
    return max(1, math.ceil(duration_s * fps - 1e-6))


def resample_times(duration_s: float, fps: float) -> list[float]:
    """Timestamps (s, from the first frame) of the fixed-fps resampling: k / fps for
    k < `resampled_frame_count`."""
    return [k / fps for k in range(resampled_frame_count(duration_s, fps))]
