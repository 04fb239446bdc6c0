"""Media as it goes into training shards: videos re-encoded to the model's fixed fps with a short GOP.

    python -m curation.transcode IN.mp4 OUT.mp4 --fps 2

Why: Mavors numbers video chunks by the timestamp of their first frame (paper §3.4:
"we transcode the video into fixed FPS, so that the index of the video chunk can be
identified from the actual timestamp"), and the loader decodes chunks of F=16 frames.
So every shard video has a constant frame rate (``fps``) and a keyframe every ``gop``
frames (default F), no B-frames and no scene-cut keyframes: a chunk starts on a
keyframe and decodes without seeking back. The frame-rate change follows the usual
"nearest earlier frame" rule (FFmpeg's ``fps`` filter): output frame k at time k/fps
shows the last source frame whose timestamp is <= k/fps, so the output lasts as long
as the source: ``model.preprocessing.resampled_frame_count`` frames, the processor's
own rule. Encoding is single-threaded and so bit-reproducible: the same input and profile give the same bytes (shards stay
byte-identical across rebuilds). Images are checked to decode and kept as they are.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Literal

from pydantic import Field

from core.config import ConfigModel
from core.storage import storage_errors
from curation.media import MediaInfo, file_sha256, probe_image
from model.preprocessing import MediaError, resampled_frame_count

DEFAULT_FPS = 2.0
"""Fixed frame rate of shard videos when neither the mixture nor the model config says otherwise: the
model area's ``MavorsConfig.video_fps`` default (not given in the paper; 16-frame chunks span 8 s)."""
FRAMES_PER_CHUNK = 16
"""Frames per video chunk F (paper §5.1, ``MavorsConfig.frames_per_chunk``); the default keyframe interval."""


def model_video_defaults() -> tuple[float, int]:
    """(fps, frames per chunk) from ``model.configuration.MavorsConfig``'s defaults, the single source of truth;
    the constants above when the model package is not importable (a data-only install)."""
    try:
        from model.configuration import MavorsConfig
    except ImportError:
        return DEFAULT_FPS, FRAMES_PER_CHUNK
    return float(MavorsConfig.video_fps), int(MavorsConfig.frames_per_chunk)


def model_patch_size() -> int:
    """Patch size of ``model.configuration.MavorsConfig``'s default vision tower; 14 (SigLIP-so400m) when the
    model package is not importable (a data-only install)."""
    try:
        from model.configuration import MavorsConfig
    except ImportError:
        return 14
    return int(MavorsConfig().patch_size)


class TranscodeConfig(ConfigModel):
    """How shard videos are encoded."""

    fps: float | None = Field(None, gt=0, le=120)
    """Fixed frame rate of every shard video; None: the model's ``MavorsConfig.video_fps`` (2.0).
    Must equal the ``video_fps`` of the checkpoint that trains on the shards."""
    gop: int | None = Field(None, ge=1)
    """Keyframe interval in frames; None: F (``MavorsConfig.frames_per_chunk``, 16), a keyframe at every chunk start."""
    codec: Literal["libx264"] = "libx264"
    """Encoder (H.264 decodes everywhere: PyAV, decord, torchvision, browsers)."""
    crf: int = Field(23, ge=0, le=51)
    """x264 constant rate factor (0 lossless, 23 default quality, higher smaller)."""
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"] = "veryfast"
    """x264 speed/size trade-off."""
    max_side: int | None = Field(None, ge=16)
    """Downscale so the longer side is at most this many pixels (aspect kept); None keeps the resolution
    (Mavors resizes dynamically itself). Cluster: e.g. 896 to bound shard size."""
    patch_size: int | None = Field(None, ge=1)
    """Vision patch size of the model that trains on the shards: media smaller than one patch on either side
    (``model.preprocessing.check_encodable``) are refused at shard build, not in training. None: the model
    config's default SigLIP-so400m tower (14); the demo's tiny Mavors uses 16. Cluster: 14."""

    def resolved(self) -> TranscodeConfig:
        """A copy with ``fps``/``gop``/``patch_size`` filled in from the model config where they are None."""
        fps, frames_per_chunk = model_video_defaults() if self.fps is None or self.gop is None else (0.0, 0)
        return self.model_copy(update={"fps": self.fps or fps, "gop": self.gop or frames_per_chunk,
                                       "patch_size": self.patch_size or model_patch_size()})

    def profile_id(self) -> str:
        """Short stable id of the resolved settings: transcoded files are cached and recorded under it."""
        cfg = self.resolved()
        settings = {**cfg.model_dump(), "x264_params": _x264_params(cfg)}  # a change of encoder flags is a new profile
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
        return f"{cfg.codec}-{cfg.fps:g}fps-g{cfg.gop}-{digest}"


_IMAGE_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


def check_image(path: str | Path) -> MediaInfo:
    """Decode an image fully with ingest's probe (one verdict on what decodes: truncated files and bombs fail
    here, not in training, whatever another library did to Pillow's globals); the bytes stay as they are."""
    path = Path(path)
    try:
        probe = probe_image(path)
    except MediaError as e:
        raise MediaError(e.reason, f"{path}: {e.detail}") from None
    fmt = probe["codec"]
    ext = _IMAGE_EXT.get(fmt or "", path.suffix.lstrip(".").lower() or "img")
    return MediaInfo("image", str(path), ext, file_sha256(path), path.stat().st_size, probe["width"],
                     probe["height"], fmt or ext)


def output_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """Even (yuv420p) output size, scaled down so the longer side is <= max_side when given."""
    scale = min(1.0, max_side / max(width, height)) if max_side else 1.0
    w, h = max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)
    return w, h


def transcode_video(src: str | Path, dst: str | Path, cfg: TranscodeConfig) -> MediaInfo:
    """Write ``dst`` (mp4, H.264, constant ``cfg.fps``, keyframe every ``cfg.gop`` frames) from ``src``.

    Written to a temporary name, fsynced and renamed, so ``dst`` is either absent or complete.
    Raises :class:`MediaError` (``undecodable_video``) for input that does not decode, and
    :class:`core.storage.StorageError` when the output cannot be written (disk full, read-only,
    permissions): only the input's errors are verdicts on the media.
    """
    import av

    src, dst, cfg = Path(src), Path(dst), cfg.resolved()
    tmp = dst.with_name(f".{dst.name}.partial")
    step = Fraction(1) / Fraction(cfg.fps).limit_denominator(1001)
    n_out = 0
    try:
        with _input_errors(src):
            inp = av.open(str(src))
        with inp:
            with _input_errors(src):
                if not inp.streams.video:
                    raise MediaError("undecodable_video", f"{src}: no video stream")
                ist = inp.streams.video[0]
                w, h = output_size(ist.codec_context.width, ist.codec_context.height, cfg.max_side)
            with storage_errors(tmp):
                dst.parent.mkdir(parents=True, exist_ok=True)
                # our file object, not a path: PyAV leaves a file it opened open when writing the header
                # fails (a full disk), holding the space of the deleted partial file for the process's life
                with open(tmp, "wb") as f:
                    with av.open(f, "w", format="mp4") as out:
                        ost = _add_encoder(out, cfg, step, w, h)
                        for frame in _fixed_rate_frames(inp, ist, step, w, h, Fraction(cfg.fps), src):
                            frame.pts, frame.time_base = n_out, step
                            frame.pict_type = av.video.frame.PictureType.NONE  # the source's I-frames must not force ours
                            out.mux(ost.encode(frame))
                            n_out += 1
                        out.mux(ost.encode(None))
                    f.flush()
                    os.fsync(f.fileno())  # durable before it gets its final name: a reader sees all of it or nothing
                tmp.replace(dst)
    except BaseException:
        with contextlib.suppress(OSError):  # a read-only folder has no partial file to remove either
            tmp.unlink(missing_ok=True)
        raise
    fps = float(Fraction(1) / step)
    with storage_errors(dst, "read"):
        sha, size = file_sha256(dst), dst.stat().st_size
    return MediaInfo("video", str(dst), "mp4", sha, size, w, h, "h264", fps=fps, n_frames=n_out, duration_s=n_out / fps)


@contextlib.contextmanager
def _input_errors(src: Path) -> Iterator[None]:
    """Errors reading the source (PyAV's are ``OSError``/``ValueError`` subclasses; rates and sizes of a
    corrupt stream divide by zero) as :class:`MediaError` ``undecodable_video``: a verdict on the media."""
    import av

    try:
        yield
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, ZeroDivisionError) as e:
        raise MediaError("undecodable_video", f"{src}: {type(e).__name__}: {e}") from None


def _x264_params(cfg: TranscodeConfig) -> str:
    """A keyframe exactly every ``cfg.gop`` frames (no B-frames, no scene-cut keyframes, closed GOPs), and no
    macroblock-tree rate control: this x264 build's mbtree lookahead reads uninitialised stack memory
    (valgrind memcheck), so the same input gave different bytes depending on what the process had run
    before (serial vs Ray builds differed by a few bytes); without it the output is a function of the input."""
    return f"keyint={cfg.gop}:min-keyint={cfg.gop}:scenecut=0:bframes=0:open-gop=0:mbtree=0"


def _add_encoder(out, cfg: TranscodeConfig, step: Fraction, width: int, height: int):
    """The output stream: rate 1/step, :func:`_x264_params`, one encoder thread, so the same input gives the
    same bytes."""
    ost = out.add_stream(cfg.codec, rate=Fraction(1) / step, options={
        "crf": str(cfg.crf), "preset": cfg.preset, "threads": "1", "x264-params": _x264_params(cfg),
    })
    ost.width, ost.height, ost.pix_fmt = width, height, "yuv420p"
    ost.codec_context.time_base = step
    ost.codec_context.gop_size = cfg.gop
    return ost


def _fixed_rate_frames(inp, ist, step: Fraction, width: int, height: int, fallback_rate: Fraction, src: Path):
    """The source's frames at the fixed rate ``1/step``, scaled to (width, height) yuv420p: output instant
    ``k * step`` shows the last source frame at or before it, and the last frame is held for one source
    frame interval (FFmpeg's ``fps`` filter rule). Frames are yielded as they are decoded; a held frame is
    yielded once per output instant it covers."""
    with _input_errors(src):  # around the decoding only: the consumer's (output) errors never pass through here
        src_rate = ist.average_rate or ist.guessed_rate or fallback_rate
        n = 0
        t0 = last_t = None
        held = None  # the source frame on screen, already scaled: (H, W) yuv420p
        for i, frame in enumerate(inp.decode(ist)):
            t = Fraction(frame.pts * ist.time_base) if frame.pts is not None else Fraction(i) / src_rate
            t0 = t if t0 is None else t0
            if held is not None:
                while n * step < t - t0:  # output instants before this frame show the held one
                    yield held
                    n += 1
            held = frame.reformat(width=width, height=height, format="yuv420p")
            last_t = t
        if held is None:
            raise MediaError("undecodable_video", f"{src}: no frame decodes")
        n_total = resampled_frame_count(float(last_t - t0 + Fraction(1) / Fraction(src_rate)), float(1 / step))
    while n < n_total:
        yield held
        n += 1


def decode_check(data: bytes, kind: str) -> int:
    """Decode media bytes completely; returns the frame count (1 for an image). Raises MediaError."""
    if kind == "image":
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
        except Exception as e:  # noqa: BLE001 - PIL raises many types for bad bytes
            raise MediaError("undecodable_image", str(e)) from None
        return 1
    import av

    try:
        with av.open(io.BytesIO(data)) as c:
            n = sum(1 for _ in c.decode(video=0))
    except (av.error.FFmpegError, IndexError, ValueError) as e:
        raise MediaError("undecodable_video", str(e)) from None
    if n == 0:
        raise MediaError("undecodable_video", "no frame decodes")
    return n


def keyframe_indices(path: str | Path) -> list[int]:
    """Indices (in display order) of the keyframes of a video: every ``gop``-th frame for shard videos."""
    import av

    with av.open(str(path)) as c:
        return [i for i, f in enumerate(c.decode(video=0)) if f.key_frame]


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--fps", type=float, default=None, help="default: MavorsConfig.video_fps")
    p.add_argument("--gop", type=int, default=None, help="default: MavorsConfig.frames_per_chunk")
    a = p.parse_args(argv)
    info = transcode_video(a.src, a.dst, TranscodeConfig(fps=a.fps, gop=a.gop))
    print(json.dumps(info.as_dict(), indent=1))


if __name__ == "__main__":
    main()
