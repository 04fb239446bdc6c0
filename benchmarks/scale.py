"""Benchmark: how the cost of each curation step grows from 10^4 to 10^7 samples -- time, peak RSS and catalog
bytes per step and size, the fitted growth exponent per step, and a PNG of time against n.

    python benchmarks/scale.py                                    # 10^4, 10^5, 10^6: ~10 min on 2 idle cores
    python benchmarks/scale.py --sizes 10000,100000               # ~1 min
    python benchmarks/scale.py --sizes 10000,100000,1000000,10000000 --tmp /big/disk   # 10^7: ~2 h, ~15 GB disk

Synthetic sources (:mod:`demo.synthetic`: a LLaVA-Video-178K-style JSON list and a caption Parquet, n/2 rows
each, over one pool of 256 images and 16 clips, so annotation rows and not media dominate) go through the
library's own steps, each in a fresh subprocess (its peak RSS is its own) on one catalog per size:
annotation ingest (``curation.ingest.ingest``, in-process probing), PPL-row writes (``curation.perplexity
.write_results``, one transaction per ``rows_per_commit`` scores streamed from the catalog in Arrow batches),
the paper's dedup policy (``curation.dedup.run_policy``), the held-out split (``curation.heldout``), a
Table-6-like mixture whose counts scale with n (``curation.mixtures.select_mixture``) and shard planning
(``curation.shards.build``: media preparation of the pool, then packing every stage into shards, no tar
written). DuckDB runs with :class:`core.settings.CatalogSettings` (``--threads``, ``--memory-limit``).

Goals (issue 20): every exponent <= 1.1; ingest >= 50,000 samples/s at the largest size; no step holds all
samples as Python objects -- checked as peak-memory growth between the two largest sizes below
:data:`BYTES_PER_SAMPLE_GOAL` per added sample (a dict per sample costs several hundred bytes): of RSS by default,
which also holds DuckDB's buffers and sort/join memory (up to its ``memory_limit``), or with ``--heap`` of the
Python heap alone (tracemalloc; timings then inflated).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from core.paths import REPO_ROOT
from core.processes import process_memory

STEPS = ("ingest", "ppl_rows", "dedup", "heldout", "mixture", "shard_media", "shard_plan")
BYTES_PER_SAMPLE_GOAL = 200
ROWS_PER_COMMIT = 1024
SCORER = "bench"


def _settings(args: argparse.Namespace):
    from core.settings import CatalogSettings

    return CatalogSettings(threads=args.threads, memory_limit=args.memory_limit)


def _mixture(n: int):
    """Table-6-like: captions dominate Stage 1, a mix in 1.5, instructions (QA) in 2; counts scale with n."""
    from curation.mixtures import MixtureConfig
    from demo.synthetic import CAPTIONS, VIDEO_QA

    return MixtureConfig.model_validate({"name": "scale", "seed": 0, "stages": {
        "1": [{"source": CAPTIONS, "count": int(0.4 * n), "category": "Image Caption"}],
        "1.5": [{"source": CAPTIONS, "ratio": "1/2", "category": "Image Caption"},
                {"source": VIDEO_QA, "count": int(0.05 * n), "category": "Video QA"}],
        "2": [{"source": VIDEO_QA, "count": int(0.2 * n), "category": "Instruction"},
              {"source": CAPTIONS, "count": int(0.1 * n), "category": "Image Caption"}]}})


def run_step(step: str, root: Path, n: int, args: argparse.Namespace) -> tuple[float, dict]:
    """One step on the catalog of size ``n`` (in a child process): (wall seconds of the step alone, what it did).
    Imports, opening the catalog and building configs are not timed."""
    from core.catalog import Catalog
    from curation.dedup import DedupPolicy, TaskRule, run_policy
    from curation.heldout import reserve_heldout
    from curation.ingest import ingest
    from curation.mixtures import STAGES, select_mixture, stage_slug
    from curation.shards.build import _plan_stage, _prepare_media, stage_dir
    from curation.sources import load_manifests

    cat = Catalog(root / "work" / "catalog.duckdb", settings=_settings(args))
    mixture = _mixture(n)
    stages = [s for s in STAGES if s in mixture.stages]
    if step.startswith("shard"):
        cfg = mixture.transcode.resolved()
        out = root / "shards"
    t0 = time.perf_counter()
    if step == "ingest":
        reports = ingest(load_manifests(sorted(root.glob("*.yaml"))), cat, workers=0, run_id="scale")
        detail = {"samples": sum(r.new for r in reports), "refused": sum(sum(r.quarantined.values()) for r in reports)}
    elif step == "ppl_rows":
        detail = {"scores": _ppl_rows(cat, root)}
    elif step == "dedup":
        detail = run_policy(cat, DedupPolicy(name="paper", scorer=SCORER, seed=0, tasks={
            "qa": TaskRule(rule="keep_k_lowest", k=2), "caption": TaskRule(rule="random_one_of_k_lowest", k=2)}))
    elif step == "heldout":
        detail = reserve_heldout(cat, per_family=64, seed=0).counts
    elif step == "mixture":
        detail = {"selected": select_mixture(cat, mixture).n_selected}
    elif step == "shard_media":  # the pool's media transcoded / checked once: constant in n
        _prepare_media(cat, mixture.name, stages, out / ".media" / cfg.profile_id(), cfg, cfg.profile_id(),
                       parallel=False, ray_settings=None, run_id="scale", batch=64)
        detail = {"prepared": cat.scalar("SELECT count(*) FROM shard_media")}
    elif step == "shard_plan":
        plans = [_plan_stage(cat, mixture, s, cfg.profile_id(), stage_dir(out, mixture.name, s),
                             f"{mixture.name}-{stage_slug(s)}") for s in stages]
        detail = {"shards": sum(1 for plan in plans for _ in plan),  # each shard's records dropped once counted
                  "planned": cat.scalar("SELECT count(*) FROM mixture_members WHERE shard IS NOT NULL")}
    else:
        raise ValueError(step)
    return time.perf_counter() - t0, detail


def _ppl_rows(cat, root: Path) -> int:
    """Synthetic scores for every sample, streamed from the catalog in Arrow batches and written as the scorer
    writes them (``write_results``, one transaction per batch)."""
    from curation.perplexity import ScorerConfig, write_results
    from inference.config import EngineConfig

    config = ScorerConfig(name=SCORER, engine=EngineConfig(model_path=root), rows_per_commit=ROWS_PER_COMMIT)
    n = 0
    with cat.connection() as con:
        reader = con.cursor().execute(
            "SELECT sample_id, source, item, (hash(sample_id) % 1000) / 250.0 AS mean_nll FROM samples "
            "ORDER BY sample_id").to_arrow_reader(ROWS_PER_COMMIT)
        for batch in reader:
            results = [{**r, "ok": True, "ppl": math.exp(r["mean_nll"]), "n_tokens": 32}
                       for r in batch.to_pylist()]
            write_results(cat, config, results, "scale")
            n += len(results)
    return n


def _child(args: argparse.Namespace) -> None:
    if args.heap:
        tracemalloc.start()
    cpu0 = time.process_time()
    seconds, detail = run_step(args.child, args.root, args.n, args)
    print(json.dumps({"seconds": seconds, "cpu_seconds": time.process_time() - cpu0,
                      "peak_rss": process_memory("VmHWM"),
                      "py_heap": tracemalloc.get_traced_memory()[1] if args.heap else None, "detail": detail},
                     default=str))


def catalog_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / "work").glob("catalog.duckdb*") if p.is_file())


def measure(step: str, root: Path, n: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", step, "--root", str(root), "--n", str(n)]
    cmd += [a for k, v in (("--threads", args.threads), ("--memory-limit", args.memory_limit)) if v is not None
            for a in (k, str(v))] + (["--heap"] if args.heap else [])
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    if out.returncode:
        sys.exit(f"step {step} at n={n:,} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "catalog_bytes": catalog_bytes(root)}


def exponent(ns: list[int], ts: list[float]) -> float:
    """Least-squares slope of log t against log n."""
    xs, ys = [math.log(n) for n in ns], [math.log(max(t, 1e-6)) for t in ts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def plot(results: dict[int, dict[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted(results)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for step in STEPS:
        ax.loglog(ns, [results[n][step]["seconds"] for n in ns], marker="o", label=step)
    ref = results[ns[0]]["ingest"]["seconds"]
    ax.loglog(ns, [ref * n / ns[0] for n in ns], "k:", label="linear (from ingest)")
    ax.set_xlabel("samples n")
    ax.set_ylabel("wall seconds")
    ax.set_title(f"Curation steps against n (load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated sample counts")
    ap.add_argument("--threads", type=int, default=None, help="CatalogSettings.threads (default: DuckDB's)")
    ap.add_argument("--memory-limit", default=None, help="CatalogSettings.memory_limit, e.g. 6GB")
    ap.add_argument("--tmp", type=Path, default=None, help="where sources and catalogs go (default: system temp)")
    ap.add_argument("--png", type=Path, default=Path("scale.png"), help="the time-against-n plot")
    ap.add_argument("--heap", action="store_true",
                    help="trace Python's allocations (tracemalloc: times inflated) and judge the memory goal on the "
                         "Python heap's peak instead of RSS, which also holds DuckDB's working memory")
    ap.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    from demo.synthetic import write_sources

    sizes = sorted(int(float(s)) for s in args.sizes.split(","))
    results: dict[int, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="scale-bench-", dir=args.tmp) as tmp:
        for n in sizes:
            root = Path(tmp) / f"n{n}"
            t0 = time.perf_counter()
            write_sources(root, n)
            print(f"n={n:,}: synthetic sources written in {time.perf_counter() - t0:.1f} s", flush=True)
            results[n] = {}
            for step in STEPS:
                results[n][step] = r = measure(step, root, n, args)
                print(f"  {step:<11} {r['seconds']:8.2f} s  {r['peak_rss'] / 2**20:8.0f} MiB  "
                      f"{r['catalog_bytes'] / 2**20:8.1f} MiB catalog  {json.dumps(r['detail'])[:90]}", flush=True)
    report(results, args)
    plot(results, args.png)
    print(f"plot: {args.png.resolve()}")


def report(results: dict[int, dict[str, dict]], args: argparse.Namespace) -> None:
    ns = sorted(results)
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; DuckDB threads={args.threads or 'default'} "
          f"memory_limit={args.memory_limit or 'default'}")
    memory = "py_heap" if args.heap else "peak_rss"
    unit = "MiB heap" if args.heap else "MiB RSS"
    head = f"{'step':<11}" + "".join(f"{f'n={n:.0e}':>26}" for n in ns) + f"{'exponent':>10}{'B/sample':>10}"
    print(head + "\n" + " " * 11 + "".join(f"{f's / {unit} / MiB cat':>26}" for _ in ns))
    exps, growth = {}, {}
    for step in STEPS:
        cells = "".join(f"{results[n][step]['seconds']:>10.2f}{results[n][step][memory] / 2**20:>8.0f}"
                        f"{results[n][step]['catalog_bytes'] / 2**20:>8.1f}" for n in ns)
        exps[step] = exponent(ns, [results[n][step]["seconds"] for n in ns]) if len(ns) > 1 else float("nan")
        growth[step] = ((results[ns[-1]][step][memory] - results[ns[-2]][step][memory]) / (ns[-1] - ns[-2])
                        if len(ns) > 1 else float("nan"))
        print(f"{step:<11}{cells}{exps[step]:>10.2f}{growth[step]:>10.0f}")
    rate = ns[-1] / results[ns[-1]]["ingest"]["seconds"]
    mark = {True: "met", False: "NOT met"}
    print("\ngoals:")
    bad = [s for s in STEPS if not exps[s] <= 1.1]
    print(f"  every exponent <= 1.1: {mark[not bad]}" + (f" ({', '.join(f'{s} {exps[s]:.2f}' for s in bad)})" if bad else ""))
    print(f"  annotation ingest >= 50,000 samples/s: {mark[rate >= 50_000]} ({rate:,.0f} samples/s at n={ns[-1]:,})")
    heavy = [s for s in STEPS if not growth[s] < BYTES_PER_SAMPLE_GOAL]
    what = "Python heap" if args.heap else "RSS (with DuckDB's working memory: --heap separates Python's)"
    print(f"  no step holds all samples as Python objects (peak {what} growth < {BYTES_PER_SAMPLE_GOAL} B per added "
          f"sample): {mark[not heavy]}" + (f" ({', '.join(f'{s} {growth[s]:.0f} B' for s in heavy)})" if heavy else ""))


if __name__ == "__main__":
    main()
