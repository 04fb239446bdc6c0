"""curation.transcode: shard images are checked with ingest's probe; a clip and its shard copy give the same
frames (one frame-count rule, model.preprocessing.resampled_frame_count); the same clip gives the same bytes
in-process, in two threads, on two Ray workers (repeated, fresh workers each time) and in a worker whose
floating-point unit flushes denormals (serial-vs-Ray byte identity of whole shards is tested with the shard
build, tests/curation/shards/test_build_shards.py).

    pytest tests/curation/test_transcode.py -q
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import mmap
import platform
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np

import pytest
from PIL import Image, ImageFile

from curation.transcode import TranscodeConfig, check_image, transcode_video
from model.media import read_video
from model.preprocessing import MediaError

pytestmark = pytest.mark.usefixtures("ray_by_value")  # Ray workers get this module's encoder by value


def test_check_image_refuses_a_truncated_file_even_when_pillow_is_told_to_accept_it(demo_corpus):
    """Shard building and ingest give one verdict; lmms-eval turns LOAD_TRUNCATED_IMAGES on process-wide."""
    path = demo_corpus / "image_captions" / "images" / "bad_truncated.jpg"
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(MediaError) as err:
            check_image(path)
        assert err.value.reason == "truncated_image" and str(path) in err.value.detail
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def test_check_image_describes_a_good_image_as_pillow_and_sha256_see_it(demo_corpus):
    path = sorted((demo_corpus / "image_captions" / "images").glob("cap_*.jpg"))[0]
    info = check_image(path)
    with Image.open(path) as im:
        assert (info.width, info.height, info.codec) == (*im.size, im.format)
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and info.ext == "jpg"
    assert info.bytes == path.stat().st_size



@pytest.mark.parametrize("n_src, src_rate", [(120, Fraction(30000, 1001)), (61, Fraction(25))])
def test_a_clip_and_its_shard_copy_give_the_same_frames_and_chunks(tmp_path, n_src, src_rate):
    """Fractional durations: 120 frames at 29.97 fps last 4.004 s, 61 at 25 fps 2.44 s. At 2 fps the instants
    k/2 inside the clip are k = 0..8 (4.0 < 4.004) and k = 0..4 (2.0 < 2.44): 9 and 5 frames, counted by hand."""
    av = pytest.importorskip("av")
    src, dst = tmp_path / "src.mp4", tmp_path / "copy.mp4"
    with av.open(str(src), "w") as out:
        st = out.add_stream("mpeg4", rate=src_rate)
        st.width, st.height, st.pix_fmt = 32, 32, "yuv420p"
        for i in range(n_src):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 2 % 256, np.uint8), format="rgb24")
            out.mux(st.encode(frame))
        out.mux(st.encode(None))
    expected = {120: 9, 61: 5}[n_src]
    info = transcode_video(src, dst, TranscodeConfig(fps=2.0, gop=4))
    assert info.n_frames == expected
    plans = [read_video(p, 2.0, 4, 64, lambda a: a, str(p))[1] for p in (src, dst)]
    assert plans[0] == plans[1] and len(plans[0].chunk_positions) == math.ceil(expected / 4)


# -- byte-reproducible transcodes ---------------------------------------------------------------------------
REPRO = TranscodeConfig(fps=2.0, gop=16, patch_size=16)  # resolved, as a build hands it to its workers
FTZ_DAZ = 0x8040  # MXCSR bits: flush denormal results to zero, treat denormal inputs as zero


class _Mxcsr:
    """Read and write this thread's SSE control register (x86-64 SysV): two tiny machine-code functions in an
    executable page, since neither Python nor glibc exposes FTZ/DAZ."""

    SET = bytes([0x89, 0x7C, 0x24, 0xFC, 0x0F, 0xAE, 0x54, 0x24, 0xFC, 0xC3])  # mov [rsp-4],edi; ldmxcsr; ret
    GET = bytes([0x0F, 0xAE, 0x5C, 0x24, 0xFC, 0x8B, 0x44, 0x24, 0xFC, 0xC3])  # stmxcsr; mov eax,[rsp-4]; ret

    def __init__(self):
        self.page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        self.page.write(self.SET + self.GET)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(self.page))
        self.set = ctypes.CFUNCTYPE(None, ctypes.c_uint32)(addr)
        self.get = ctypes.CFUNCTYPE(ctypes.c_uint32)(addr + len(self.SET))


def _encode(src: Path, dst: Path, flush_denormals: bool = False) -> str:
    """sha256 of ``src`` transcoded to ``dst`` (read back with hashlib), or ``refused: REASON``; with
    ``flush_denormals`` the encode runs with FTZ/DAZ set on this thread (checked to take effect)."""
    mxcsr = _Mxcsr() if flush_denormals else None
    if mxcsr:
        saved = mxcsr.get()
        mxcsr.set(saved | FTZ_DAZ)
    try:
        if mxcsr:
            tiny = float("1e-310")  # a denormal double: multiplied on the SSE unit, it flushes to zero
            assert tiny * 1.0 == 0.0, "FTZ/DAZ did not take effect"
        transcode_video(src, dst, REPRO)
    except MediaError as e:
        return f"refused: {e.reason}"
    finally:
        if mxcsr:
            mxcsr.set(saved)
    return hashlib.sha256(dst.read_bytes()).hexdigest()


def _demo_videos(demo_corpus: Path) -> list[Path]:
    """The demo corpus's videos, the unusable ones included (their refusal must be as reproducible)."""
    return sorted(demo_corpus.rglob("*.mp4"))


def _on_ray(ray, videos: list[Path], out: Path, *, flush_denormals: tuple[bool, bool] = (False, False)
            ) -> tuple[dict[str, str], set[int]]:
    """Transcode ``videos`` on two fresh Ray worker processes (actors) at once, round robin; returns
    name -> :func:`_encode` result and the workers' pids."""
    @ray.remote(num_cpus=1)
    class Encoder:
        def pid(self) -> int:
            import os

            return os.getpid()

        def encode(self, src: Path, dst: Path, flush: bool) -> str:
            return _encode(src, dst, flush)

    workers = [Encoder.remote() for _ in range(2)]
    try:
        refs = {v.name: workers[i % 2].encode.remote(v, out / v.name, flush_denormals[i % 2])
                for i, v in enumerate(videos)}
        return {name: ray.get(ref) for name, ref in refs.items()}, set(ray.get([w.pid.remote() for w in workers]))
    finally:
        for w in workers:
            ray.kill(w)


def test_transcodes_are_byte_identical_in_process_in_threads_and_on_two_ray_workers(demo_corpus, ray_local,
                                                                                     tmp_path):
    videos = _demo_videos(demo_corpus)
    serial = {v.name: _encode(v, tmp_path / "serial" / v.name) for v in videos}
    assert sum(not h.startswith("refused") for h in serial.values()) >= 10
    assert {h for h in serial.values() if h.startswith("refused")} == {"refused: undecodable_video"}
    with ThreadPoolExecutor(2) as pool:
        threads = dict(zip(serial, pool.map(lambda v: _encode(v, tmp_path / "threads" / v.name), videos)))
    assert threads == serial
    for rep in range(3):  # fresh workers each time, each clip on the other worker than in the run before
        order = videos[rep % 2:] + videos[:rep % 2]
        on_ray, pids = _on_ray(ray_local, order, tmp_path / f"ray{rep}")
        assert len(pids) == 2 and on_ray == serial, f"run {rep}"


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="sets the x86-64 MXCSR register")
def test_transcodes_do_not_depend_on_the_workers_floating_point_mode(demo_corpus, ray_local, tmp_path):
    """Flush-to-zero / denormals-are-zero, as a library built with -ffast-math leaves them in a process."""
    videos = _demo_videos(demo_corpus)
    serial = {v.name: _encode(v, tmp_path / "serial" / v.name) for v in videos}
    flushed = {v.name: _encode(v, tmp_path / "flushed" / v.name, flush_denormals=True) for v in videos}
    assert flushed == serial
    on_ray, _ = _on_ray(ray_local, videos, tmp_path / "ray", flush_denormals=(True, False))
    assert on_ray == serial
