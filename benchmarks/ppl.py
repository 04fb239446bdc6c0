"""Benchmark: PPL scoring throughput -- batched transformers scorer and vLLM scorer vs a naive per-sample loop.

    python benchmarks/ppl.py                              # tiny random Qwen2-VL, 64 image+text samples, CPU
    python benchmarks/ppl.py --model /models/Qwen2-VL-7B-Instruct --device cuda --dtype bfloat16 --n 512

Same samples, same model, one process. The baseline is the transformers
engine with ``batch_size=1`` (one forward per sample, the loop one writes
first); the batched scorer is the same engine with length-bucketed batches of
``--batch-size``; vLLM scores with ``prompt_logprobs``. All run as the pipeline
runs them (``curation.perplexity.ScoreStage`` through ``inference.pool.run_stages``
in-process, committed batches of ``--batch-size``), so each row of the table is
the full scorer (rendering, media decode, forward, masking). Each measurement
follows one warm-up batch. Target: batched >= 3x the naive loop
on CPU. Also reports the largest |mean NLL| difference of each backend
against the naive loop (all float32 unless ``--dtype`` says otherwise).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def make_requests(root: Path, n: int, seed: int = 0):
    """``n`` one-image QA conversations with answers of varied length (images of a few sizes)."""
    from PIL import Image

    from curation.perplexity import to_chat_request

    rng = np.random.RandomState(seed)
    words = "a red circle moves left then a blue square appears near the top while the camera stays still".split()
    requests = []
    for i in range(n):
        h, w = [(56, 56), (56, 84), (84, 56), (112, 112)][i % 4]
        path = root / f"img_{i}.png"
        Image.fromarray((rng.rand(h, w, 3) * 255).astype("uint8")).save(path)
        answer = " ".join(rng.choice(words, size=rng.randint(6, 60))).capitalize() + "."
        conv = [{"from": "human", "value": "<image>\nDescribe the picture in detail."}, {"from": "gpt", "value": answer}]
        requests.append(to_chat_request(f"bench/{i}", conv, [("image", str(path))]))
    return requests


def timed(engine, requests, batch_size: int) -> tuple[float, list[dict]]:
    """Score ``requests`` as ``mavors ppl score`` does: :class:`ScoreStage` through the pipeline's executor in
    this process, committed batches of ``batch_size``; one warm-up batch first, not timed."""
    from curation.perplexity import ScorerConfig, ScoreStage
    from inference.pool import EngineStage, run_stages

    config = ScorerConfig(name="bench", engine=engine, rows_per_commit=batch_size)
    rows = [{"sample_id": r.request_id, "source": "bench", "item": r.request_id, "request_json": json.dumps(r.messages)}
            for r in requests[:batch_size] + requests]
    batches = run_stages(rows, [EngineStage(ScoreStage, engine, (config.model_dump_json(),))], batch_size=batch_size,
                         use_ray=False)
    next(batches)  # warm-up
    t0 = end = time.perf_counter()
    out = []
    for batch in batches:
        end = time.perf_counter()
        out += batch
    bad = [r for r in out if not r["ok"]]
    if bad:
        raise RuntimeError(f"scoring failed: {bad[0]}")
    return end - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="VLM checkpoint (default: a tiny random Qwen2-VL made here)")
    ap.add_argument("--n", type=int, default=64, help="samples")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--no-vllm", action="store_true")
    args = ap.parse_args()

    from inference import EngineConfig

    with tempfile.TemporaryDirectory(prefix="ppl-bench-") as tmp:
        root = Path(tmp)
        model = args.model
        if model is None:
            from demo.tiny_models import make_tiny

            model = make_tiny(root / "models")["qwen2vl"]
        requests = make_requests(root, args.n)
        base = dict(model_path=model, modalities=["text", "image"], dtype=args.dtype, device=args.device,
                    max_model_len=2048)
        results = {}
        for name, cfg in [("naive loop (transformers, batch 1)", EngineConfig(backend="transformers", batch_size=1,
                                                                                **base)),
                          (f"batched transformers (batch {args.batch_size})",
                           EngineConfig(backend="transformers", batch_size=args.batch_size, **base))] + (
                [] if args.no_vllm else
                [(f"vLLM prompt_logprobs (batch {args.batch_size})",
                  EngineConfig(backend="vllm", batch_size=args.batch_size, max_images_per_prompt=1,
                               **{**base, "max_model_len": 2048}))]):
            results[name] = timed(cfg, requests, args.batch_size)
        n_tokens = sum(r["n_tokens"] for r in next(iter(results.values()))[1])
    naive_s, naive = next(iter(results.values()))
    print(f"model={model.name if args.model else 'tiny random Qwen2-VL'} samples={args.n} "
          f"answer tokens={n_tokens} device={args.device} dtype={args.dtype}")
    print(f"{'scorer':<40}{'seconds':>9}{'samples/s':>11}{'vs naive':>10}{'max |dNLL|':>12}")
    for name, (seconds, out) in results.items():
        diff = max(abs(a["mean_nll"] - b["mean_nll"]) for a, b in zip(out, naive))
        print(f"{name:<40}{seconds:>9.2f}{args.n / seconds:>11.1f}{naive_s / seconds:>9.1f}x{diff:>12.2e}")


if __name__ == "__main__":
    main()
