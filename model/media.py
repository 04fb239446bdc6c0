"""Media decoding for the Mavors processor: images via PIL, videos via PyAV resampled to a fixed fps.

Sources are a path, raw bytes, a PIL image (images) or a uint8 array: (H, W, 3) for an image,
(T, H, W, 3) for a video already at the fixed fps. Every failure is a `MediaError` naming the item.

    frames, plan = read_video("clip.mp4", fps=2.0, frames_per_chunk=16, max_chunks=64, size_fn=...)
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Union

import numpy as np

from model.preprocessing import MediaError, VideoPlan, plan_video, resample_times

MediaSource = Union[str, Path, bytes, "PIL.Image.Image", np.ndarray]  # noqa: F821


def describe(source: MediaSource, fallback: str) -> str:
    """A short name for error messages."""
    return str(source) if isinstance(source, (str, Path)) else fallback


def load_image(source: MediaSource, name: str) -> np.ndarray:
    """RGB uint8 (H, W, 3), writable."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] != 3:
            raise MediaError("bad_image_array", f"{name}: image array must be (H, W, 3), got {source.shape}")
        return source.astype(np.uint8, copy=False)
    try:
        if isinstance(source, Image.Image):
            img = source
        elif isinstance(source, bytes):
            img = Image.open(io.BytesIO(source))
        else:
            img = Image.open(source)
        # np.array, not asarray: PIL exposes a read-only buffer, and torch.from_numpy on it warns later
        return np.array(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise MediaError("undecodable_image", f"{name}: cannot decode image ({exc})") from exc


def _open(source: MediaSource, name: str):
    import av

    try:
        return av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source))
    except (av.error.FFmpegError, OSError) as exc:
        raise MediaError("undecodable_video", f"{name}: cannot open video ({exc})") from exc


def read_video(source: MediaSource, fps: float, frames_per_chunk: int, max_chunks: int,
               convert: Callable[[np.ndarray], "object"], name: str) -> tuple[list, VideoPlan]:
    """Decode, resample to ``fps`` (sample-and-hold: resampled frame k is the last decoded frame at or
    before k/fps), plan chunks (`plan_video`) and return ``convert(frame)`` for every planned frame.

    Only the frames the plan keeps are converted, so long videos stay cheap in memory.
    """
    if isinstance(source, np.ndarray):
        if source.ndim != 4 or source.shape[-1] != 3:
            raise MediaError("bad_video_array", f"{name}: video array must be (T, H, W, 3), got {source.shape}")
        plan = plan_video(source.shape[0], frames_per_chunk, max_chunks, name)
        converted = {i: convert(source[i]) for i in sorted(set(plan.frame_indices))}
        return [converted[i] for i in plan.frame_indices], plan

    import av

    times = _frame_times(source, name)
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / fps
    targets = resample_times(times[-1] - times[0] + step, fps)
    plan = plan_video(len(targets), frames_per_chunk, max_chunks, name)
    wanted = sorted(set(plan.frame_indices))
    converted: dict[int, object] = {}
    container = _open(source, name)
    try:
        stream = container.streams.video[0]
        prev = None
        w = 0
        for frame in container.decode(stream):
            t = _frame_time(frame, stream) - times[0]
            # every wanted target strictly before this frame is served by the previous frame
            while w < len(wanted) and targets[wanted[w]] < t - 1e-6 and prev is not None:
                converted[wanted[w]] = convert(prev.to_ndarray(format="rgb24"))
                w += 1
            if w >= len(wanted):
                break
            prev = frame  # kept as a PyAV frame: only frames that serve a target are converted to RGB
        while w < len(wanted) and prev is not None:
            converted[wanted[w]] = convert(prev.to_ndarray(format="rgb24"))
            w += 1
    except av.error.FFmpegError as exc:
        raise MediaError("undecodable_video", f"{name}: cannot decode video ({exc})") from exc
    finally:
        container.close()
    if len(converted) != len(wanted):
        raise MediaError("undecodable_video", f"{name}: decoded {len(converted)} of {len(wanted)} planned frames")
    return [converted[i] for i in plan.frame_indices], plan


def _frame_time(frame, stream) -> float:
    if frame.pts is not None and stream.time_base is not None:
        return float(frame.pts * stream.time_base)
    return float(frame.time or 0.0)


def _frame_times(source: MediaSource, name: str) -> list[float]:
    """Presentation times (s) of all video packets, sorted (demux only, no decoding)."""
    import av

    container = _open(source, name)
    try:
        if not container.streams.video:
            raise MediaError("undecodable_video", f"{name}: no video stream")
        stream = container.streams.video[0]
        times = sorted(float(p.pts * stream.time_base) for p in container.demux(stream)
                       if p.pts is not None and p.size > 0)
    except av.error.FFmpegError as exc:
        raise MediaError("undecodable_video", f"{name}: cannot read video ({exc})") from exc
    finally:
        container.close()
    if not times:
        raise MediaError("empty_video", f"{name}: zero-length video (no frames)")
    return times
