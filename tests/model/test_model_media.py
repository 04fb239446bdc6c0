"""model/media.py: decoded images are writable arrays, so the processor's torch.from_numpy never warns."""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from model.media import load_image


def test_a_decoded_image_is_a_writable_copy_with_the_pixels_pil_reads():
    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    out = load_image(buf.getvalue(), "x.png")
    assert out.flags.writeable and out.dtype == np.uint8
    np.testing.assert_array_equal(out, pixels)  # PNG is lossless: the stock encoder's input comes back
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "The given NumPy array is not writable" would raise here
        torch.from_numpy(out)


def _gop_video(path, n=90, fps=10, keyint=12, bframes=2):
    """An H.264 mp4 with B-frames and a keyframe every ``keyint`` frames; frame i has its own pattern."""
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps, options={"x264-params": f"keyint={keyint}:min-keyint={keyint}:"
                                                         f"scenecut=0:bframes={bframes}"})
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(n):
            rgb = np.zeros((48, 64, 3), np.uint8)
            rgb[:, (i % 16) * 4:(i % 16) * 4 + 4] = 255
            rgb[..., 1] = 2 * i
            out.mux(s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(s.encode(None))
    return path


def test_frames_at_seeks_and_returns_the_frames_a_full_decode_shows(tmp_path, monkeypatch):
    """Against a plain PyAV decode of every frame: the frame at each offset is the last one at or before it,
    for sparse offsets (a seek per GOP), dense ones (no seek), repeats, and offsets past the end."""
    import av

    from model.media import frame_index, frames_at

    path = str(_gop_video(tmp_path / "gop.mp4"))
    with av.open(path) as c:
        s = c.streams.video[0]
        decoded = [(float(f.pts * s.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(s)]
    t0 = decoded[0][0]
    index = frame_index(path, path)
    assert len(index.times) == len(decoded) == 90 and len(index.key_times) == 8  # 0, 12, ..., 84

    def reference(offset):
        return [rgb for t, rgb in decoded if t - t0 <= offset + 1e-6][-1]

    for offsets in ([0.0, 8.95], [0.55, 3.3, 3.3, 5.0, 8.4], [i / 10 for i in range(0, 90, 7)],
                    [k * 0.05 for k in range(40)], [1.25, 100.0]):
        got = frames_at(path, index, offsets, lambda rgb: rgb, path)
        assert len(got) == len(offsets)
        for offset, rgb in zip(offsets, got):
            np.testing.assert_array_equal(rgb, reference(offset), err_msg=f"offset {offset}")

    # the sparse case decodes two GOPs' worth, not the file: count what the decoder hands out
    import model.media as media

    real, handed = media._decoded, []

    def counting(container, stream, pts):
        for item in real(container, stream, pts):
            handed.append(pts)
            yield item

    monkeypatch.setattr(media, "_decoded", counting)
    frames_at(path, index, [0.0, 8.95], lambda rgb: rgb, path)
    assert handed.count(None) <= 2 and 0 < len(handed) - handed.count(None) <= 12  # 6 frames of GOP 84..89, +lead
