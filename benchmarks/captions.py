"""Benchmark: caption throughput per engine backend, and how far decoding media holds the engines back.

    python benchmarks/captions.py                        # tiny random Qwen2-VL, demo videos + images, CPU
    python benchmarks/captions.py --backends transformers --n 64 --max-tokens 48

Same media, same tiny checkpoint, one process, the pipeline's own stages through
its executor (``inference.pool.run_stages`` in-process):
``curation.captions.decode_media`` (PyAV/PIL decode + frame sampling, the CPU
stage) then ``CaptionStage`` (one engine, batches of ``--batch-size``). The
baseline is the transformers engine with ``batch_size=1`` (one generate per
media). Per backend three runs: the engine alone on media decoded beforehand
(its throughput, the ceiling), the pipeline with decoding one batch at a time
before generation (``prefetch=0``), and the pipeline as it runs (decoding
``prefetch`` batches ahead in a thread). ``vs engine`` is cosmos-curate's
pipeline efficiency: pipeline output tokens/s over the engine's tokens/s on
pre-decoded inputs, goal at least 0.9. Every caption is sampled to exactly ``--max-tokens`` tokens (a random
model never emits EOS), so backends do the same work. One warm-up batch per
engine is excluded. The demo uses random weights: figures compare backends on
this machine, they do not predict a 72B model on GPUs.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def media_files(root: Path, n: int) -> list[tuple[str, str]]:
    """``n`` (kind, path) pairs alternating demo videos and images (corrupt demo files left out)."""
    from demo.corpus import generate

    corpus = generate(root / "demo", seed=0)
    videos = sorted(p for p in (corpus / "kinetics_like" / "videos").glob("*.mp4"))
    videos += sorted(p for p in (corpus / "video_qa" / "videos").glob("vqa_*.mp4"))
    images = sorted(p for p in (corpus / "image_captions" / "images").glob("cap_*"))
    pairs = [("video", str(v)) for v in videos] + [("image", str(i)) for i in images]
    pairs.sort(key=lambda kp: kp[1])
    return [pairs[i % len(pairs)] for i in range(n)]


def roster(model: Path, backend: str, batch_size: int, max_tokens: int, frames: int, threads: int):
    """A one-captioner roster ``bench`` (the merger is required by the schema, never run here)."""
    from curation.captions import RosterConfig

    engine = {"backend": backend, "model_path": str(model), "modalities": ["text", "image", "video"],
              "batch_size": batch_size, "max_model_len": 1024, "video_frames": frames, "torch_threads": threads}
    return RosterConfig.model_validate({
        "captioners": [{"name": "bench", "engine": engine,
                        "sampling": {"temperature": 1.0, "max_tokens": max_tokens, "seed": 0}}],
        "merger": {"name": "unused", "engine": {**engine, "modalities": ["text"]}},
    })


def measure(model: Path, backend: str, batch_size: int, media: list[tuple[str, str]], max_tokens: int,
            frames: int, threads: int, mode: str) -> dict:
    """Caption ``media`` through the pipeline's executor in this process; the first batch is a warm-up.

    ``mode``: ``engine`` (media decoded before the clock starts, only the engine stage timed),
    ``serial`` (``prefetch=0``) or ``overlap`` (the pipeline's default prefetch).
    """
    from curation.captions import CaptionStage, decode_media
    from inference.pool import EngineStage, MapStage, run_stages

    bench = roster(model, backend, batch_size, max_tokens, frames, threads)
    decode = MapStage(decode_media, {"video_frames": frames})
    caption = EngineStage(CaptionStage, bench.captioners[0].engine, (bench.model_dump_json(),), {"name": "bench"})
    rows = [{"kind": k, "storage_path": p, "media_hash": f"m{i}", "needs": json.dumps(["bench"])}
            for i, (k, p) in enumerate(media[:batch_size] + media)]  # warm-up batch, then the measured media
    if mode == "engine":
        rows = [r for b in run_stages(rows, [decode], batch_size=batch_size, use_ray=False) for r in b]
        batches = run_stages(rows, [caption], batch_size=batch_size, use_ray=False)
    else:
        batches = run_stages(rows, [decode, caption], batch_size=batch_size, use_ray=False,
                             prefetch=0 if mode == "serial" else 2)
    decode_s = generate_s = 0.0
    n_tokens = 0
    next(batches)  # warm-up
    t0 = end = time.perf_counter()
    for batch in batches:
        end = time.perf_counter()
        decode_s += sum(r["decode_s"] for r in batch) if mode != "engine" else 0.0
        generate_s += sum(r["seconds::bench"] for r in batch)
        n_tokens += sum(json.loads(r["raw::bench"])["n_tokens"] for r in batch)
    return {"backend": backend, "batch": batch_size, "mode": mode, "captions": len(media), "tokens": n_tokens,
            "decode_s": decode_s, "generate_s": generate_s, "wall_s": end - t0}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="Qwen2-VL-style checkpoint (default: a tiny random one)")
    ap.add_argument("--backends", default="transformers,vllm")
    ap.add_argument("--n", type=int, default=32, help="media files to caption")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--frames", type=int, default=4, help="frames sampled per video")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: no OpenMP spin-waits on a shared, oversubscribed CPU)")
    args = ap.parse_args(argv)
    import os

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.model is None:
            from demo.tiny_models import make_tiny

            args.model = make_tiny(root / "models")["qwen2vl"]
        media = media_files(root, args.n)
        runs = [("transformers", 1, "overlap")] + [(b, args.batch_size, mode) for b in args.backends.split(",")
                                                   for mode in ("engine", "serial", "overlap")]
        results = [measure(args.model, b, bs, media, args.max_tokens, args.frames, args.threads, mode)
                   for b, bs, mode in runs]

    base = results[0]["captions"] / results[0]["wall_s"]
    ceiling = {(r["backend"], r["batch"]): r["tokens"] / r["wall_s"] for r in results if r["mode"] == "engine"}
    print(f"\n{args.n} media ({sum(k == 'video' for k, _ in media)} videos, {args.frames} frames each), "
          f"{args.max_tokens} tokens per caption, {args.threads} torch thread(s), {args.model}")
    print(f"{'backend':<14}{'batch':>6}{'mode':>9}{'captions/s':>12}{'tokens/s':>10}{'decode s':>10}"
          f"{'generate s':>12}{'decode share':>14}{'vs engine':>11}{'vs baseline':>13}")
    for r in results:
        rate, tokens = r["captions"] / r["wall_s"], r["tokens"] / r["wall_s"]
        share = r["decode_s"] / (r["decode_s"] + r["generate_s"])
        key = (r["backend"], r["batch"])
        efficiency = f"{tokens / ceiling[key]:>11.2f}" if key in ceiling else f"{'':>11}"
        print(f"{r['backend']:<14}{r['batch']:>6}{r['mode']:>9}{rate:>12.2f}{tokens:>10.0f}{r['decode_s']:>10.2f}"
              f"{r['generate_s']:>12.2f}{share:>14.1%}{efficiency}{rate / base:>12.2f}x")
    print("baseline: transformers, batch 1 (one generate per media). captions/s counts decode + generate.\n"
          "engine: media decoded before the clock (the ceiling); serial: decode, then generate, batch by batch;\n"
          "overlap: the pipeline (decoding runs ahead in a thread). vs engine: tokens/s over the engine's "
          "(goal >= 0.9 for overlap).")


if __name__ == "__main__":
    main()
