"""Shard loader worker scaling: steady-state samples/s of :class:`trainers.data.ShardLoader` with the Mavors
processor at paper settings (384 px, patch 14, F=16, up to 9 sub-images; ``--processor tiny``: the test model's),
for 0, 1 and 2 DataLoader workers, in both pixel layouts: ``tubelets`` (an image's frame repeated F times, 81 MB
of float32 per 640x480 image) and ``frame rows`` (each distinct frame once, what the trainer's loader uses; the
model makes the tubelets on its device, :mod:`model.processing`). The main process's cost of making them on the
CPU instead is printed apart (ms per micro-batch).

    python benchmarks/loader.py                     # ~4 min on 2 idle cores (both layouts)
    python benchmarks/loader.py --samples 240 --micro 4

The shards mix what Stage 2 trains on: text-only, one JPEG (640x480), two JPEGs, and an 8 s mp4 (320x240,
at the processor's 2 fps); one micro-batch reads, decodes (image resize and tiling, frame decoding,
tubelets, tokenization) and collates. Worker start-up (from creating the loader to its first micro-batch:
forking, the first shard offset tables, the first decode) is reported apart; the rate is timed from the first
micro-batch to the last. Goal: 2 workers >= 1.6x one worker on 2 idle cores; the load average is printed
(other processes share the cores: a busy machine cannot show the scaling).

Measured on 2 idle cores (load 0.3 before, 1.8 after; nothing else running), defaults: frame rows 18.1 / 18.2 /
32.7 samples/s with 0 / 1 / 2 workers, 2 workers / 1 worker 1.80x (goal met), start-up 6.7 s per worker count;
tubelets 6.2 / 4.8 / 7.3, 1.53x (4x the bytes through the workers' queues).
"""
from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from curation.shards.format import sample_record
from curation.shards.writer import write_records
from trainers.data import build_loader


def _jpeg(rng, w: int, h: int) -> bytes:
    buf = io.BytesIO()
    # smooth noise compresses like a photo, unlike white noise
    small = rng.integers(0, 255, (h // 16, w // 16, 3), dtype=np.uint8)
    Image.fromarray(small).resize((w, h), Image.BILINEAR).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _mp4(path: Path, rng, seconds: int, fps: int = 2, w: int = 320, h: int = 240) -> bytes:
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(seconds * fps):
            frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), (i * 9) % 255, np.uint8)
                                               + rng.integers(0, 30, (h, w, 3), dtype=np.uint8), format="rgb24")
            frame.pts = i
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return path.read_bytes()


def make_shards(tmp: Path, n: int, fps: int) -> Path:
    rng = np.random.default_rng(0)
    video = _mp4(tmp / "clip.mp4", rng, seconds=8, fps=fps)
    records = []
    for i in range(n):
        kind = ("text", "image", "two-images", "video")[i % 4]
        sid = f"bench/{kind}/{i}"
        q = {"text": "What is the derivative of x^2?", "image": "<image>\nDescribe the image.",
             "two-images": "<image>\n<image>\nWhat differs between the two?", "video": "<video>\nWhat happens?"}[kind]
        media = {"text": [], "image": [(_jpeg(rng, 640, 480), "jpg", {"kind": "image", "width": 640, "height": 480})],
                 "two-images": [(_jpeg(rng, 640, 480), "jpg", {"kind": "image", "width": 640, "height": 480})
                                for _ in range(2)],
                 "video": [(video, "mp4", {"kind": "video", "width": 320, "height": 240, "fps": fps,
                                           "duration_s": 8.0})]}[kind]
        conv = [{"from": "human", "value": q}, {"from": "gpt", "value": f"An answer of a few words, number {i}."}]
        records.append(sample_record(sid, {"sample_id": sid, "conversation": conv}, media))
    write_records(records, tmp / "shards", prefix="bench", max_samples=max(1, n // 6), max_bytes=1 << 30)
    return tmp / "shards"


def measure(root: Path, processor, workers: int, micro: int, batches: int) -> tuple[float, float]:
    """(start-up s, steady samples/s over ``batches`` micro-batches after the first)."""
    t0 = time.perf_counter()
    loader = build_loader(root, processor, micro_size=micro, seed=0, shuffle_window=64, num_workers=workers)
    stream = iter(loader)
    next(stream)
    t1 = time.perf_counter()
    seen = 0
    for _ in range(batches):
        seen += len(next(stream)["sample_id"])
    t2 = time.perf_counter()
    stream.close()  # shuts the workers down
    return t1 - t0, seen / (t2 - t1)


def _batches(root: Path, processor, micro: int, n: int) -> list[dict]:
    stream = iter(build_loader(root, processor, micro_size=micro, seed=0, shuffle_window=64))
    return [next(stream) for _ in range(n)]


def megabytes(root: Path, processor, micro: int = 4, n: int = 4) -> float:
    """Mean MB of pixel_values per micro-batch (what crosses from a worker), over the first ``n``."""
    return sum(b["pixel_values"].nbytes for b in _batches(root, processor, micro, n)) / n / 1e6


def expand_ms(root: Path, processor, micro: int, n: int = 4) -> float:
    """ms per micro-batch to make frame rows into tubelets on the CPU (:func:`model.vision.frame_rows_to_tubelets`)."""
    from model.vision import frame_rows_to_tubelets

    batches = [b for b in _batches(root, processor.with_frame_rows(), micro, n) if "chunk_frames" in b]
    t0 = time.perf_counter()
    for b in batches:
        frame_rows_to_tubelets(b["pixel_values"], b["chunk_grids"], b["chunk_frames"], processor.num_channels,
                               processor.frames_per_chunk, processor.patch_size)
    return (time.perf_counter() - t0) / max(1, len(batches)) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=96, help="samples in the shards (the stream cycles over them)")
    p.add_argument("--micro", type=int, default=4, help="samples per micro-batch")
    p.add_argument("--batches", type=int, default=24, help="micro-batches timed after the first")
    p.add_argument("--repeat", type=int, default=2, help="runs per worker count (best rate reported)")
    p.add_argument("--processor", choices=("paper", "tiny"), default="paper",
                   help="paper: 384 px, patch 14, F=16 (an image is 81 MB of float32 tubelets); tiny: the test "
                        "model's 64 px, patch 16, F=4 (same decoding, small tensors)")
    a = p.parse_args()
    from demo.tiny_models import make_tokenizer
    from model.processing import MavorsProcessor

    torch.set_num_threads(1)  # a DataLoader worker runs with one thread: the in-process run gets the same
    processor = MavorsProcessor(make_tokenizer()) if a.processor == "paper" else MavorsProcessor(
        make_tokenizer(), frames_per_chunk=4, patch_size=16, image_size=64, max_sub_images=4)
    with tempfile.TemporaryDirectory() as d:
        root = make_shards(Path(d), a.samples, int(processor.video_fps))
        print(f"{a.processor} processor; shards: {a.samples} samples (text / 640x480 JPEG / two JPEGs / 8 s mp4 320x240), micro-batch "
              f"{a.micro}, {a.batches} micro-batches timed, best of {a.repeat}")
        print(f"  {'layout':<11} {'workers':<8} {'start-up s':>10} {'samples/s':>10} {'vs 1 worker':>12} "
              f"{'MB/batch':>9}   load before")
        for layout, proc in (("tubelets", processor), ("frame rows", processor.with_frame_rows())):
            rates = {}
            for workers in (0, 1, 2):
                load = os.getloadavg()[0]
                runs = [measure(root, proc, workers, a.micro, a.batches) for _ in range(a.repeat)]
                start, rate = min(r[0] for r in runs), max(r[1] for r in runs)
                rates[workers] = rate
                ratio = f"{rate / rates[1]:.2f}x" if 1 in rates else ""
                print(f"  {layout:<11} {workers:<8} {start:10.2f} {rate:10.1f} {ratio:>12} {megabytes(root, proc):9.1f}"
                      f"   {load:.1f}")
            print(f"  {layout}: 2 workers / 1 worker {rates[2] / rates[1]:.2f}x (goal >= 1.6x on 2 idle cores)")
        print(f"frame rows -> tubelets on the CPU (the model does it on its device): "
              f"{expand_ms(root, processor, a.micro):.1f} ms per micro-batch; cpus {os.cpu_count()}, "
              f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
