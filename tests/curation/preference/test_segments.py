"""Shuffled-segment videos: the four parts are the original's parts permuted, frame for frame.

    pytest tests/curation/preference/test_segments.py -q
"""
from __future__ import annotations

import av
import numpy as np
import pytest

from curation.preference.segments import SegmentRefusal, segment_bounds, shuffle_permutation, shuffle_segments


def write_video(path, n_frames, *, fps=8, codec="libx264", size=(48, 64), static=False, options=None):
    """A clip whose frame i shows a bright square at a position that depends on i (distinct frames)."""
    h, w = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(n_frames):
            img = np.full((h, w, 3), 30, np.uint8)
            if not static:
                y, x = (i * 3) % (h - 8), (i * 5) % (w - 8)
                img[y:y + 8, x:x + 8] = (250, 40 + 7 * i % 200, 90)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def decoded(path):
    with av.open(str(path)) as c:
        frames = [f.to_ndarray() for f in c.decode(video=0)]  # native yuv planes, (H*3/2, W)
        stream = c.streams.video[0]
        return frames, stream.average_rate, c.duration


@pytest.mark.parametrize("n_frames,codec,options", [
    (24, "libx264", None), (30, "mpeg4", None),
    (122, "libx264", {"g": "10", "bf": "2"}),  # many GOPs with B-frames: segments are found by seeking
])
def test_segments_are_the_original_segments_permuted(tmp_path, n_frames, codec, options):
    src = write_video(tmp_path / f"src-{codec}.mp4", n_frames, codec=codec, options=options)
    result = shuffle_segments(src, tmp_path / "out" / "shuffled.mp4", seed=7)

    orig, fps, orig_duration = decoded(src)
    shuf, out_fps, out_duration = decoded(result.path)
    assert result.permutation != (0, 1, 2, 3) and sorted(result.permutation) == [0, 1, 2, 3]
    assert len(shuf) == len(orig) == n_frames == result.n_frames
    assert out_fps == fps and out_duration == orig_duration
    assert result.duration_s == pytest.approx(n_frames / float(fps))

    # Hand-worked cut: segment i is frames [i*N//4, (i+1)*N//4).
    edges = [i * n_frames // 4 for i in range(5)]  # 122 frames: 30, 31, 30, 31
    pieces = [orig[edges[i]:edges[i + 1]] for i in range(4)]
    expected = [f for k in result.permutation for f in pieces[k]]
    assert len(expected) == len(shuf)
    for i, (a, b) in enumerate(zip(expected, shuf)):
        assert np.array_equal(a, b), f"frame {i} differs"
    # ... and the order really changed.
    assert any(not np.array_equal(a, b) for a, b in zip(orig, shuf))


def test_permutation_is_seeded_and_never_identity():
    perms = {shuffle_permutation(seed, f"video-{i}") for seed in range(3) for i in range(200)}
    assert (0, 1, 2, 3) not in perms
    assert len(perms) == 23  # every non-identity permutation of 4 shows up
    assert shuffle_permutation(5, "a.mp4") == shuffle_permutation(5, "a.mp4")
    assert all(p != (0, 1) for p in (shuffle_permutation(s, n_segments=2) for s in range(50)))


def test_bounds_equal_duration():
    assert segment_bounds(24, 4) == [(0, 6), (6, 12), (12, 18), (18, 24)]
    assert segment_bounds(18, 4) == [(0, 4), (4, 9), (9, 13), (13, 18)]


def test_too_short_video_is_refused_with_reason(tmp_path):
    src = write_video(tmp_path / "short.mp4", 15)  # 4 segments x 4 frames needs 16
    with pytest.raises(SegmentRefusal) as err:
        shuffle_segments(src, tmp_path / "o.mp4")
    assert err.value.reason == "video_too_short" and "15 frames" in str(err.value)
    assert not (tmp_path / "o.mp4").exists()


def test_undecodable_and_static_videos_are_refused(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video" * 10)
    with pytest.raises(SegmentRefusal) as err:
        shuffle_segments(bad, tmp_path / "o.mp4")
    assert err.value.reason == "undecodable_video" and "bad.mp4" in str(err.value)

    still = write_video(tmp_path / "still.mp4", 20, static=True)
    with pytest.raises(SegmentRefusal) as err:
        shuffle_segments(still, tmp_path / "o.mp4")
    assert err.value.reason == "indistinguishable_segments"


@pytest.mark.parametrize("room", ["0", "8k"], ids=["full", "fills-up"])
def test_a_full_disk_is_a_run_failure_naming_the_file_not_a_refusal(tmp_path, mount_tmpfs, room):
    """No space for the shuffled copy: a StorageError (not a SegmentRefusal, which would drop the sample), no
    partial file left open or on disk; with room the same call writes the same bytes as on a roomy disk."""
    import hashlib

    from core.storage import StorageError

    src = write_video(tmp_path / "in.mp4", 122, size=(96, 128))
    disk = mount_tmpfs(tmp_path / "disk", "4k")
    if room == "0":
        (disk / "filler").write_bytes(b"x" * 4096)
    with pytest.raises(StorageError) as err:
        shuffle_segments(src, disk / "o.mp4", seed=3)
    assert str(err.value) == f"cannot write {disk / '.o.mp4.partial'}: No space left on device"
    assert not list(disk.glob("*.partial")) and not (disk / "o.mp4").exists()
    (disk / "filler").unlink(missing_ok=True)
    mount_tmpfs.remount(disk, "size=4m")
    shuffle_segments(src, disk / "o.mp4", seed=3)
    shuffle_segments(src, tmp_path / "roomy.mp4", seed=3)
    assert hashlib.sha256((disk / "o.mp4").read_bytes()).digest() == hashlib.sha256(
        (tmp_path / "roomy.mp4").read_bytes()).digest()
