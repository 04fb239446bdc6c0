"""Shuffled-segment videos: the negatives of the video-caption DPO domain (paper Appendix A, item 3).

A video is cut into ``n_segments`` (four in the paper) parts of equal duration and
the parts are written back in a seeded order that is never the identity. A
caption of that video describes events in the wrong order: the rejected answer of
a video-caption preference pair.

    python -m curation.preference.segments IN.mp4 OUT.mp4 --seed 0

How it is cut, and what "equal duration" means here:
- Frames are counted by decoding (container frame counts lie). Segment ``i``
  holds frames ``[floor(i*N/k), floor((i+1)*N/k))``: with N divisible by k the
  segments are exactly equal, otherwise they differ by at most one frame.
- A video with fewer than ``min_frames_per_segment`` frames in a segment is
  refused (:class:`SegmentRefusal` with reason ``video_too_short``): a shuffle of
  one- or two-frame parts is not a temporal edit a caption can reflect. Four
  frames per segment is the default; the Mavors sampler reads 16-frame chunks, so
  production configs may ask for more.
- A video whose segments decode to identical pixels (a still shot) is refused
  (``indistinguishable_segments``): its shuffle is the same video, so the pair
  would teach nothing.
- The output is re-encoded with H.264 in lossless mode (``qp=0``) in the source's
  pixel format (``yuv444p`` when x264 cannot take it) at the source's average frame
  rate: decoded frames of the output are bit-identical to the source's frames,
  in permuted order, and frame count and duration are kept. Audio is dropped (the
  captioner sees frames only). Frames are streamed segment by segment (seeking to
  each segment's keyframe when timestamps allow), so memory stays at one frame.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import random
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av

from core.storage import storage_errors

# Pixel formats libx264 encodes directly; anything else goes through yuv444p.
_X264_PIX_FMTS = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "gray"}


class SegmentRefusal(ValueError):
    """A video that cannot be made into a shuffled-segment negative; ``reason`` is a countable code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class ShuffledVideo:
    """A written shuffled-segment video and how it was made (recorded as DPO provenance)."""

    source: Path
    path: Path
    permutation: tuple[int, ...]
    """Output segment ``k`` is source segment ``permutation[k]``."""
    segments: tuple[tuple[int, int], ...]
    """Source frame ranges ``[start, end)`` of segments 0..k-1."""
    n_frames: int
    fps: Fraction
    duration_s: float
    pix_fmt: str


def segment_bounds(n_frames: int, n_segments: int) -> list[tuple[int, int]]:
    """Frame ranges ``[start, end)`` of ``n_segments`` equal-duration parts (sizes differ by ≤ 1 frame)."""
    edges = [i * n_frames // n_segments for i in range(n_segments + 1)]
    return list(zip(edges[:-1], edges[1:]))


def shuffle_permutation(seed: int | str, key: str = "", n_segments: int = 4) -> tuple[int, ...]:
    """A permutation of ``range(n_segments)`` drawn uniformly among the non-identity ones.

    Deterministic in (seed, key): the same video in the same pair set always gets
    the same order, a different key (another video) an independent one.
    """
    if n_segments < 2:
        raise ValueError(f"n_segments must be at least 2 to shuffle, got {n_segments}")
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    identity = tuple(range(n_segments))
    choices = [p for p in itertools.permutations(identity) if p != identity]
    return rng.choice(choices)


def _open_video(path: Path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise SegmentRefusal("undecodable_video", f"{path}: cannot open ({e})") from None
    if not container.streams.video:
        container.close()
        raise SegmentRefusal("undecodable_video", f"{path}: no video stream")
    return container, container.streams.video[0]


def _frame_digest(frame: av.VideoFrame) -> bytes:
    h = hashlib.sha1()
    for plane in frame.planes:
        h.update(bytes(plane))
    return h.digest()


@dataclasses.dataclass(frozen=True)
class Probe:
    """What one full decode of a video tells: frame count, rate, format, size, per-frame pts and digests."""

    n_frames: int
    fps: Fraction
    pix_fmt: str
    width: int
    height: int
    pts: list[int | None]
    digests: list[bytes]

    @property
    def seekable(self) -> bool:
        """Frames can be found by timestamp: every pts known and strictly increasing in decode order."""
        return all(p is not None for p in self.pts) and all(a < b for a, b in zip(self.pts, self.pts[1:]))


def probe_frames(path: Path) -> Probe:
    """Decode once (refusing undecodable videos): frame count, average fps, format, pts, digests."""
    container, stream = _open_video(path)
    digests: list[bytes] = []
    pts: list[int | None] = []
    try:
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate
        pix_fmt = stream.codec_context.pix_fmt
        width, height = stream.codec_context.width, stream.codec_context.height
        for frame in container.decode(stream):
            digests.append(_frame_digest(frame))
            pts.append(frame.pts)
    except av.error.FFmpegError as e:
        raise SegmentRefusal("undecodable_video", f"{path}: decoding failed after "
                             f"{len(digests)} frames ({e})") from None
    finally:
        container.close()
    if not digests:
        raise SegmentRefusal("undecodable_video", f"{path}: no frame decodes")
    if not fps:
        raise SegmentRefusal("undecodable_video", f"{path}: the stream has no frame rate")
    return Probe(len(digests), Fraction(fps), pix_fmt, width, height, pts, digests)


def _frames_in_range(path: Path, start: int, end: int, probe: Probe) -> Iterator[av.VideoFrame]:
    """Decoded frames ``start..end-1`` (decode order), streamed.

    With known, increasing timestamps it seeks to the keyframe before ``start`` and
    picks frames by pts, so a long video is decoded about twice overall, not once per
    segment; when the seek lands past ``start`` (or timestamps are unusable) it
    decodes from the top and counts frames.
    """
    if start > 0 and probe.seekable:
        wanted = probe.pts[start:end]
        container, stream = _open_video(path)
        got = 0
        try:
            container.seek(wanted[0], stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None or frame.pts < wanted[0]:
                    continue
                if frame.pts != wanted[got]:
                    break
                yield frame
                got += 1
                if got == len(wanted):
                    return
        finally:
            container.close()
        if got:  # a partial segment came out already: counting from the top would repeat it
            raise SegmentRefusal("undecodable_video", f"{path}: frames after pts {wanted[got - 1]} "
                                 "differ from the first decode")
    container, stream = _open_video(path)
    try:
        for index, frame in enumerate(container.decode(stream)):
            if index >= end:
                break
            if index >= start:
                yield frame
    finally:
        container.close()


def shuffle_segments(source: str | Path, dest: str | Path, *, seed: int | str = 0, key: str | None = None,
                     n_segments: int = 4, min_frames_per_segment: int = 4,
                     permutation: Sequence[int] | None = None) -> ShuffledVideo:
    """Write ``dest``: ``source`` cut into ``n_segments`` equal parts, reordered by a non-identity permutation.

    ``key`` (default: the source file name) and ``seed`` pick the permutation; pass
    ``permutation`` to force one (it must not be the identity). Raises
    :class:`SegmentRefusal` for videos that cannot be decoded, are too short, or
    whose segments are indistinguishable. ``dest`` is written atomically.
    """
    source, dest = Path(source), Path(dest)
    probe = probe_frames(source)
    n_frames, fps, pix_fmt, digests = probe.n_frames, probe.fps, probe.pix_fmt, probe.digests
    if n_frames < n_segments * min_frames_per_segment:
        raise SegmentRefusal("video_too_short", f"{source}: {n_frames} frames, need at least "
                             f"{n_segments} segments x {min_frames_per_segment} frames")
    bounds = segment_bounds(n_frames, n_segments)
    perm = tuple(permutation) if permutation is not None else shuffle_permutation(
        seed, key if key is not None else source.name, n_segments)
    if sorted(perm) != list(range(n_segments)) or perm == tuple(range(n_segments)):
        raise ValueError(f"{perm} is not a non-identity permutation of {n_segments} segments")
    reordered = [d for k in perm for d in digests[bounds[k][0]:bounds[k][1]]]
    if reordered == digests:
        raise SegmentRefusal("indistinguishable_segments",
                             f"{source}: the shuffled frames equal the original (static content)")

    out_fmt = pix_fmt if pix_fmt in _X264_PIX_FMTS else "yuv444p"
    tmp = dest.with_name(f".{dest.name}.partial")
    try:
        with storage_errors(tmp):  # the output's errors (disk full, read-only) stop the run, naming the file
            dest.parent.mkdir(parents=True, exist_ok=True)
            f = open(tmp, "wb")  # noqa: SIM115 - our file object: PyAV leaks a file it opens when the header fails
        try:
            with storage_errors(tmp):
                out = av.open(f, "w", format="mp4")
            stream = out.add_stream("libx264", rate=fps, options={"qp": "0", "preset": "veryfast"})
            stream.width, stream.height, stream.pix_fmt = probe.width, probe.height, out_fmt
            stream.codec_context.time_base = 1 / fps
            pts = 0
            for k in perm:
                for frame in _frames_in_range(source, *bounds[k], probe):  # the input's errors: not wrapped
                    if frame.format.name != out_fmt:
                        frame = frame.reformat(format=out_fmt)
                    else:  # a fresh frame: drop the source's picture type and timing
                        frame = av.VideoFrame.from_ndarray(frame.to_ndarray(), format=out_fmt)
                    frame.pts = pts
                    frame.time_base = 1 / fps
                    pts += 1
                    with storage_errors(tmp):
                        out.mux(stream.encode(frame))
            with storage_errors(tmp):
                out.mux(stream.encode(None))
                out.close()  # the trailer, here so its errors name the file
                f.close()
        finally:
            with contextlib.suppress(OSError):  # after an error: the error that stopped us is the one to report
                f.close()
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    if pts != n_frames:  # a segment decoded differently the second time
        tmp.unlink(missing_ok=True)
        raise SegmentRefusal("undecodable_video", f"{source}: decoded {pts} frames on re-read, {n_frames} before")
    with storage_errors(dest):
        tmp.replace(dest)
    return ShuffledVideo(source=source, path=dest, permutation=perm, segments=tuple(bounds), n_frames=n_frames,
                         fps=fps, duration_s=float(n_frames / fps), pix_fmt=out_fmt)


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--seed", default="0")
    parser.add_argument("--segments", type=int, default=4)
    args = parser.parse_args(argv)
    result = shuffle_segments(args.source, args.dest, seed=args.seed, n_segments=args.segments)
    print(f"{result.path}: permutation {result.permutation}, {result.n_frames} frames, {result.duration_s:.3f} s")


if __name__ == "__main__":
    main()
