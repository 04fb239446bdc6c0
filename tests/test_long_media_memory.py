"""Bounded memory on long media: every decoder keeps its peak RSS within 1 GiB of its baseline on a 10-minute video.

    pytest tests/test_long_media_memory.py -q

The video is 320x240 at 25 fps, 15,000 frames (a decoder that kept every frame as RGB would hold 3.5 GB):
one 8-second piece is encoded and its packets muxed 75 times, shifted in time, so it takes well under a
second to make. Each decoder path runs in its own child process: set up (imports, models), a warm-up
call on the 8-second piece, then the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``) and the
call on the long video is measured as ``VmHWM`` after it minus ``VmRSS`` before it. The paths cover
every place media are decoded: caption synthesis's decode stage, the transformers engine (generation
and PPL scoring; the vLLM engine calls the same ``inference.chat.load_video``), the Mavors engine that
DPO generates with and its shuffled-segment videos, the training loader's processor on shard bytes,
the shard transcoder and the perceptual-hash signatures.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

GIB_KB = 1024 * 1024  # /proc/self/status counts kB
FPS, PIECE_S, MINUTES, SIZE = 25, 8, 10, (320, 240)  # 8 s pieces: the 150 s DPO segments differ


def _piece(fps: int = FPS, seconds: int = PIECE_S, size: tuple[int, int] = SIZE) -> bytes:
    """An H.264 mp4 (B-frames, keyframe every 2 s) of a white bar moving over a green ramp."""
    import av

    w, h = size
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=fps, options={
            "preset": "ultrafast", "crf": "35", "x264-params": f"keyint={2 * fps}:min-keyint={2 * fps}:scenecut=0:bframes=2"})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(fps * seconds):
            rgb = np.zeros((h, w, 3), np.uint8)
            rgb[:, (i * 4) % w:(i * 4) % w + 16] = 255
            rgb[..., 1] = i % 256
            out.mux(s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(s.encode(None))
    return buf.getvalue()


def _repeat(piece: bytes, path: Path, times: int) -> Path:
    """``piece``'s packets muxed ``times`` times, each copy shifted by the piece's length (no re-encoding)."""
    import av

    with av.open(io.BytesIO(piece)) as inp:
        ist = inp.streams.video[0]
        packets = [(p.pts, p.dts, bytes(p), p.is_keyframe) for p in inp.demux(ist) if p.size]
        span = int(PIECE_S / ist.time_base)
        with av.open(str(path), "w", format="mp4") as out:
            ost = out.add_stream_from_template(ist)
            for k in range(times):
                for pts, dts, data, key in packets:
                    p = av.Packet(data)
                    p.pts, p.dts, p.time_base, p.stream, p.is_keyframe = pts + k * span, dts + k * span, ist.time_base, ost, key
                    out.mux(p)
    return path


@pytest.fixture(scope="session")
def long_videos(tmp_path_factory) -> dict[str, Path]:
    """``short``: the 8 s piece; ``long``: 10 minutes of it."""
    import av

    root = tmp_path_factory.mktemp("long-media")
    piece = _piece()
    short, long = _repeat(piece, root / "short.mp4", 1), _repeat(piece, root / "long.mp4", MINUTES * 60 // PIECE_S)
    with av.open(str(long)) as c:  # checked with a plain demux: 15,000 frames over 600 s
        s = c.streams.video[0]
        pts = [p.pts for p in c.demux(s) if p.size]
        assert len(pts) == FPS * MINUTES * 60 and float(max(pts) * s.time_base) == pytest.approx(600 - 1 / FPS)
    return {"short": short, "long": long}


_CHILD = """
import json, sys
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
SHORT, LONG, MODELS, OUT = sys.argv[1:5]
{setup}
def call(path):
{call}
call(SHORT)                                   # warm-up: codecs opened, allocator pools grown
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
base = status("VmRSS")
result = call(LONG)
print(json.dumps({{"base_kb": base, "peak_kb": status("VmHWM"), "result": result}}))
"""

_ENGINE = """
from inference import ChatRequest, EngineConfig, SamplingParams, load_engine
def request(path):
    return [ChatRequest("r", [{"role": "user", "content": [{"type": "video", "video": path},
                                                        {"type": "text", "text": "Describe the video."}]},
                              {"role": "assistant", "content": "A white bar moves to the right."}])]
"""

PATHS = {
    "caption synthesis (decode stage)": (
        "from curation.captions import decode_media",
        "b = decode_media({'kind': ['video'], 'storage_path': [path]}, video_frames=8)\n"
        "assert not b['decode_error'][0], b['decode_error']\nreturn len(b['media'][0])"),
    "transformers engine: generate": (
        _ENGINE + "e = load_engine(EngineConfig(model_path=MODELS + '/qwen2vl', modalities=['text', 'image', 'video'], "
        "video_frames=8, max_model_len=4096))",
        "return e.generate(request(path)[:1], SamplingParams(max_tokens=4))[0].completions[0].n_tokens"),
    "transformers engine: PPL score": (
        _ENGINE + "e = load_engine(EngineConfig(model_path=MODELS + '/qwen2vl', modalities=['text', 'image', 'video'], "
        "video_frames=8, max_model_len=4096))",
        "return sum(e.score(request(path))[0].mask)"),
    "Mavors engine (DPO policy): generate": (
        _ENGINE + "e = load_engine(EngineConfig(backend='mavors', model_path=MODELS + '/mavors', llm_backend='transformers',"
        " modalities=['text', 'image', 'video'], max_model_len=4096))",
        "return e.generate(request(path)[:1], SamplingParams(max_tokens=4))[0].completions[0].n_tokens"),
    "DPO shuffled segments": (
        "import os\nfrom curation.preference.segments import shuffle_segments",
        "out = OUT + '/' + os.path.basename(path)\nshuffle_segments(path, out, seed=0)\nreturn os.path.getsize(out)"),
    "training loader (processor on shard bytes)": (
        "from model.processing import MavorsProcessor\np = MavorsProcessor.from_pretrained(MODELS + '/mavors')",
        "data = open(path, 'rb').read()\n"
        "s = p.encode([{'from': 'human', 'value': '<video>'}, {'from': 'gpt', 'value': 'a bar'}], [data])\n"
        "return list(s['pixel_values'].shape)"),
    "shard transcoder": (
        "import os\nfrom curation.transcode import TranscodeConfig, transcode_video",
        "return transcode_video(path, OUT + '/t-' + os.path.basename(path), TranscodeConfig()).n_frames"),
    "perceptual-hash signature": (
        "from curation.phash import sign_media",
        "return list(sign_media('video', path).shape)"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PATHS))
def test_decoder_peak_rss_stays_within_1_gib_on_a_10_minute_video(name, long_videos, tiny_models, tmp_path):
    setup, call = PATHS[name]
    code = _CHILD.format(setup=setup, call=textwrap.indent(call, "    "))
    proc = subprocess.run([sys.executable, "-c", code, str(long_videos["short"]), str(long_videos["long"]),
                           str(Path(tiny_models["mavors"]).parent), str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    grown = out["peak_kb"] - out["base_kb"]
    print(f"{name}: baseline {out['base_kb'] / 1024:.0f} MiB, peak +{grown / 1024:.0f} MiB, result {out['result']}")
    assert grown < GIB_KB, f"{name}: peak RSS {grown / 1024:.0f} MiB above its baseline (limit 1024 MiB)"
