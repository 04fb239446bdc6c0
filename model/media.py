"""Media decoding for the Mavors processor: images via PIL, videos via PyAV resampled to a fixed fps.

Sources are a path, raw bytes, a PIL image (images) or a uint8 array: (H, W, 3) for an image,
(T, H, W, 3) for a video already at the fixed fps. Every failure is a `MediaError` naming the item.

    frames, plan = read_video("clip.mp4", fps=2.0, frames_per_chunk=16, max_chunks=64, size_fn=...)
"""
from __future__ import annotations

import bisect
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
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

    Only the planned frames are decoded and converted (:func:`frames_at`), so long videos stay cheap.
    """
    if isinstance(source, np.ndarray):
        if source.ndim != 4 or source.shape[-1] != 3:
            raise MediaError("bad_video_array", f"{name}: video array must be (T, H, W, 3), got {source.shape}")
        plan = plan_video(source.shape[0], frames_per_chunk, max_chunks, name)
        converted = {i: convert(source[i]) for i in sorted(set(plan.frame_indices))}
        return [converted[i] for i in plan.frame_indices], plan

    index = frame_index(source, name)
    times = index.times
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / fps
    targets = resample_times(times[-1] - times[0] + step, fps)
    plan = plan_video(len(targets), frames_per_chunk, max_chunks, name)
    wanted = sorted(set(plan.frame_indices))
    converted = dict(zip(wanted, frames_at(source, index, [targets[i] for i in wanted], convert, name)))
    return [converted[i] for i in plan.frame_indices], plan


@dataclass(frozen=True)
class FrameIndex:
    """Where a video's frames are, from one demux pass (no decoding): presentation times (s, sorted) of
    all frames, and the times and stream timestamps of its keyframes (the points a decoder can start at)."""

    times: list[float]
    key_times: list[float]
    key_pts: list[int]

    def offsets(self, indices) -> list[float]:
        """Times (s from the first frame) of the frames at positions ``indices`` (presentation order)."""
        return [self.times[i] - self.times[0] for i in indices]


def frame_index(source: MediaSource, name: str) -> FrameIndex:
    """The :class:`FrameIndex` of a video file or bytes; an empty or unreadable one is a `MediaError`."""
    import av

    container = _open(source, name)
    try:
        if not container.streams.video:
            raise MediaError("undecodable_video", f"{name}: no video stream")
        stream = container.streams.video[0]
        times, keys = [], []
        for p in container.demux(stream):
            if p.pts is None or p.size <= 0:
                continue
            times.append(float(p.pts * stream.time_base))
            if p.is_keyframe:
                keys.append((times[-1], int(p.pts)))
    except av.error.FFmpegError as exc:
        raise MediaError("undecodable_video", f"{name}: cannot read video ({exc})") from exc
    finally:
        container.close()
    if not times:
        raise MediaError("empty_video", f"{name}: zero-length video (no frames)")
    keys.sort()
    return FrameIndex(sorted(times), [t for t, _ in keys], [p for _, p in keys])


_EPS = 1e-6  # seconds: timestamps closer than this are the same instant


def frames_at(source: MediaSource, index: FrameIndex, offsets: Sequence[float],
              convert: Callable[[np.ndarray], "object"], name: str) -> list:
    """``convert(rgb)`` of the frame on screen at each of ``offsets`` (s from the first frame, ascending):
    the last frame at or before it, ``(H, W, 3)`` uint8 RGB.

    Only what the offsets need is decoded: when the keyframe before the next wanted frame lies beyond
    where decoding stands, the decoder seeks to it by timestamp, so a handful of frames of an hour-long
    video costs a handful of GOPs, and one decoded frame is held at a time. A seek that lands past the
    wanted frame (a file with a bad index) makes it decode the whole file in order instead.
    """
    if any(b < a for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"{name}: offsets must be ascending")
    try:
        return _frames_at(source, index, offsets, convert, name, seek=True)
    except _SeekOvershot:
        return _frames_at(source, index, offsets, convert, name, seek=False)


class _SeekOvershot(Exception):
    """A seek landed after the frame it was meant to reach."""


_EPS = 1e-6  # seconds: timestamps closer than this are the same instant


def _frames_at(source: MediaSource, index: FrameIndex, offsets: Sequence[float], convert, name: str, *,
               seek: bool) -> list:
    import av

    out: list = []
    container = _open(source, name)
    try:
        stream = container.streams.video[0]
        frames, position, sought = _decoded(container, stream, None), index.times[0], False
        held = ahead = None  # (time, frame): the last frame at or before the current target / the next one
        for offset in offsets:
            target = index.times[0] + offset
            k = bisect.bisect_right(index.key_times, target + _EPS) - 1
            if seek and k >= 0 and index.key_times[k] > position + _EPS:
                frames, position, sought = _decoded(container, stream, index.key_pts[k]), index.key_times[k], True
                held = ahead = None
            while True:
                if ahead is None:
                    ahead = next(frames, None)
                    if ahead is None:
                        position = math.inf  # the end: the held frame stays on screen
                        break
                    position = ahead[0]
                if ahead[0] > target + _EPS:
                    break
                held, ahead = ahead, None
            if held is None:
                if sought:
                    raise _SeekOvershot
                raise MediaError("undecodable_video", f"{name}: no frame decodes at or before {offset:.3f} s")
            out.append(convert(held[1].to_ndarray(format="rgb24")))
    except av.error.FFmpegError as exc:
        raise MediaError("undecodable_video", f"{name}: cannot decode video ({exc})") from exc
    finally:
        container.close()
    return out


def _decoded(container, stream, pts: int | None):
    """``(time, frame)`` in presentation order: from the top (``pts`` None) or from the keyframe at or before
    stream timestamp ``pts``, skipping pictures shown before that keyframe (an open GOP's leading frames)."""
    start = None
    if pts is not None:
        container.seek(pts, stream=stream, backward=True, any_frame=False)
        start = float(pts * stream.time_base)
    for frame in container.decode(stream):
        t = _frame_time(frame, stream)
        if start is None or t >= start - _EPS:
            yield t, frame


def _frame_time(frame, stream) -> float:
    if frame.pts is not None and stream.time_base is not None:
        return float(frame.pts * stream.time_base)
    return float(frame.time or 0.0)
