"""Hash and probe one media file: sha256 of its bytes, and what Pillow / PyAV find inside.

A probe decodes for real (an image fully, a JPEG at 1/8 scale; a video's first and last frame), so a file
that passes can be trained on. Failures raise :class:`model.preprocessing.MediaError` with a short
countable ``reason`` (``zero_byte``, ``truncated_image``, ``decompression_bomb``, ``undecodable_image``,
``undecodable_video``: a video container that does not decode, truncated or damaged; ``not_a_video``: no video
container at all, e.g. a text file named ``.mp4``; ``missing_media``) and a detail for people. :class:`MediaInfo` is what a file
holds, for the ``media`` rows of ingest and the ``shard_media`` rows of a shard build alike.

    python -m curation.media some.jpg other.mp4
"""
from __future__ import annotations

import hashlib
import os
import sys
import warnings
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

from model.preprocessing import MediaError

# Largest image accepted, in pixels: 8K x 8K covers the high-resolution images of
# LLaVA-OneVision-style mixtures; Pillow warns above this and we refuse (a bomb
# decompresses a tiny file into gigabytes).
MAX_IMAGE_PIXELS = 8192 * 8192
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class MediaInfo:
    """One media file as decoded: where it is, its sha256 and size, and what the decoder found."""

    kind: str  # image | video
    path: str
    ext: str  # file extension (mp4, jpg, png, ...): the member suffix inside a shard
    sha256: str
    bytes: int
    width: int
    height: int
    codec: str  # video codec name, or the image format (JPEG, PNG, ...)
    fps: float | None = None
    n_frames: int | None = None
    duration_s: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read 1 MiB at a time so a video never sits in memory whole."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def probe_image(path: str | os.PathLike) -> dict:
    """width, height, n_frames=1, codec (format) of an image that fully decodes."""
    from PIL import Image, ImageFile

    # Some libraries flip Pillow's process-wide LOAD_TRUNCATED_IMAGES on at import (lmms-eval does), which
    # makes a truncated file decode "fine" with grey padding; the probe's verdict must not depend on that.
    load_truncated, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        with warnings.catch_warnings():
            # Pillow's own limit (a process-wide global we leave alone) warns, then refuses at 2x: both refuse here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # reads the header only
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise MediaError("decompression_bomb", f"{im.width}x{im.height} pixels, over the limit "
                                                           f"of {MAX_IMAGE_PIXELS} ({path})")
                im.verify()  # structure and checksums (PNG CRCs); the object is unusable after
            with Image.open(path) as im:
                fmt, (width, height) = im.format, im.size
                # A JPEG decodes at 1/8 scale (Pillow's draft): every entropy-coded byte is still read, so truncated
                # data fails the same, but the inverse DCT and colour conversion shrink 64x (1.3-1.6x the rate).
                im.draft(im.mode, (1, 1))
                im.load()  # the full decode: truncated data fails here
    except MediaError:  # a ValueError: the clauses below must not rename its reason
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise MediaError("decompression_bomb", str(e)) from None
    except Image.UnidentifiedImageError as e:
        raise MediaError("undecodable_image", str(e)) from None
    except (OSError, SyntaxError, ValueError) as e:
        text = str(e)
        reason = "truncated_image" if "truncated" in text.lower() or "broken data stream" in text else "undecodable_image"
        raise MediaError(reason, text) from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = load_truncated
    return {"width": width, "height": height, "n_frames": 1, "codec": fmt, "duration_s": None, "fps": None}


def video_container(head: bytes) -> str | None:
    """The container a file's first bytes announce (ISO BMFF: mp4/mov/m4v, Matroska/WebM, AVI, MPEG-TS/PS, FLV,
    Ogg), or None: then it is no video file at all, whatever its name says."""
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"):
        return "mp4"
    if head[:4] == b"\x1aE\xdf\xa3":
        return "matroska"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:4] == b"\x00\x00\x01\xba":
        return "mpeg-ps"
    if head[:1] == head[188:189] == b"G":  # a sync byte every 188-byte packet
        return "mpeg-ts"
    if head[:3] == b"FLV":
        return "flv"
    if head[:4] == b"OggS":
        return "ogg"
    return None


def _unopenable_video(path: str | os.PathLike, error: Exception) -> MediaError:
    """Why FFmpeg could not read a video: ``not_a_video`` when no container signature is there (a text file
    named .mp4), else ``undecodable_video`` (a real container, truncated or damaged)."""
    with open(path, "rb") as f:
        head = f.read(189)
    container = video_container(head)
    if container is None:
        return MediaError("not_a_video", f"no video container signature (starts with {head[:16]!r}); "
                                         f"{type(error).__name__}: {error}")
    return MediaError("undecodable_video", f"{container} container, truncated or damaged: "
                                           f"{type(error).__name__}: {error}")


def probe_video(path: str | os.PathLike) -> dict:
    """width, height, fps, n_frames, duration_s, codec of a video whose first and last frames decode.

    Frames are counted by demuxing packets (cheap, no decode); the first frame is
    decoded from the start, the last by seeking to the last keyframe and decoding on.
    """
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError("undecodable_video", "no video stream")
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1  # one core per probe: Ray gives each task one CPU
            codec = stream.codec_context.name
            n_packets, last_key_pts, end_pts = 0, None, None
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                n_packets += 1
                if packet.is_keyframe and packet.pts is not None:
                    last_key_pts = packet.pts if last_key_pts is None else max(last_key_pts, packet.pts)
                if packet.pts is not None:
                    pkt_end = packet.pts + (packet.duration or 0)
                    end_pts = pkt_end if end_pts is None else max(end_pts, pkt_end)
            if n_packets == 0:
                raise MediaError("undecodable_video", "video stream has no packets")
            if stream.frames and n_packets < stream.frames:
                raise MediaError("undecodable_video", f"truncated: {n_packets} of {stream.frames} frames present")
            container.seek(0, stream=stream)
            first = next(container.decode(stream), None)
            container.seek(last_key_pts or 0, stream=stream, any_frame=False)
            last = None
            for last in container.decode(stream):  # from the last keyframe to the end
                pass
            if first is None or last is None:
                raise MediaError("undecodable_video", "first or last frame does not decode")
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else None
            tb = stream.time_base or Fraction(1, 1)
            start = stream.start_time or 0
            if end_pts is not None:
                duration = float((end_pts - start) * tb)
            elif fps:
                duration = n_packets / fps
            else:
                duration = None
            return {"width": first.width, "height": first.height, "n_frames": n_packets, "fps": fps,
                    "duration_s": duration, "codec": codec}
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as e:
        raise _unopenable_video(path, e) from None


def hash_and_probe(path: str | os.PathLike, kind: str) -> MediaInfo:
    """sha256 + probe of one file; raises :class:`MediaError`."""
    if not os.path.exists(path):
        raise MediaError("missing_media", f"{path} does not exist")
    if not os.path.isfile(path):
        raise MediaError("missing_media", f"{path} is not a regular file")
    size = os.path.getsize(path)
    if size == 0:
        raise MediaError("zero_byte", f"{path} is empty")
    probe = probe_image(path) if kind == "image" else probe_video(path)
    return MediaInfo(kind=kind, path=str(path), ext=Path(path).suffix.lstrip(".").lower(), sha256=file_sha256(path),
                     bytes=size, **probe)


if __name__ == "__main__":
    from curation.sources import media_kind

    for arg in sys.argv[1:]:
        try:
            print(arg, hash_and_probe(arg, media_kind(arg) or "image"))
        except MediaError as e:
            print(arg, "->", e.reason, e.detail)
