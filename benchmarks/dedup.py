"""Benchmark: the PPL dedup policy SQL (curation/dedup.py) on synthetic catalogs -- time and peak RSS.

    python benchmarks/dedup.py                       # 10M score rows, 1M media groups, 2 DuckDB threads
    python benchmarks/dedup.py --rows 2000000 --groups 200000
    python benchmarks/dedup.py --rows 100000000 --groups 10000000 --memory-limit 6GB --tmp /big/disk   # ~25 GB disk

Builds a catalog with ``--rows`` samples (half QA, half captions, each with one
media hash drawn from ``--groups`` groups, 5% text-only) and a PPL score for
each, then runs the paper policy (QA keep-2-lowest, caption random-1-of-2-lowest)
in a fresh subprocess so its peak RSS is the policy run's alone. Target: < 30 s
and < 4 GiB at 10M rows on 2 cores; < 5 minutes at 10^8 rows (half the paper's corpus) within a 6 GiB
``memory_limit`` (CatalogSettings), DuckDB spilling to ``<catalog>.tmp`` beyond it (the largest size of that
folder is reported). Baseline in the same run: a plain ``GROUP BY`` over the same rows (the floor any grouping
pass pays).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from core.paths import REPO_ROOT
from core.processes import process_memory


def build(path: Path, rows: int, groups: int, settings) -> float:
    from core.catalog import Catalog

    t0 = time.perf_counter()
    with Catalog(path, settings=settings) as cat, cat.connection():
        cat.con.execute("""
            INSERT INTO samples (sample_id, source, item, task, conversation, media_hashes, content_sha256)
            SELECT 'src' || (i % 7) || '/' || i, 'src' || (i % 7), CAST(i AS VARCHAR),
                   CASE WHEN i % 2 = 0 THEN 'qa' ELSE 'caption' END,
                   '[]',
                   CASE WHEN i % 20 = 0 THEN []::TEXT[]
                        ELSE [sha256(CAST(hash(i, 17) % $groups AS VARCHAR))] END,
                   ''
            FROM range($rows) t(i)
        """, {"rows": rows, "groups": groups})
        cat.con.execute("""
            INSERT INTO ppl_scores (sample_id, scorer, template_version, text_scope, ppl, mean_nll, n_tokens,
                                    backend, model_path)
            SELECT sample_id, 'bench', 'llava2chat-v1', 'answer', exp(m), m, 32, 'synthetic', '-'
            FROM (SELECT sample_id, (hash(sample_id) % 1000000) / 250000.0 AS m FROM samples)
        """)
        cat.con.execute("CHECKPOINT")
    return time.perf_counter() - t0


def run_child(path: Path, settings, mode: str) -> None:
    """Run in a subprocess: the policy (``policy``) or the GROUP BY floor (``groupby``); print JSON."""
    from core.catalog import Catalog
    from curation.dedup import DedupPolicy, TaskRule, run_policy

    spill = _SpillWatch(Path(f"{path}.tmp"))
    with Catalog(path, settings=settings) as cat, cat.connection(), spill:
        t0 = time.perf_counter()
        start = resource.getrusage(resource.RUSAGE_SELF)
        cpu0 = start.ru_utime + start.ru_stime
        if mode == "policy":
            policy = DedupPolicy(name="bench", scorer="bench", seed=0, tasks={
                "qa": TaskRule(rule="keep_k_lowest", k=2),
                "caption": TaskRule(rule="random_one_of_k_lowest", k=2)})
            counts = run_policy(cat, policy)
        else:
            n = cat.scalar("SELECT count(*) FROM (SELECT array_to_string(s.media_hashes, '+') AS g, s.task, "
                           "min(p.ppl) FROM samples s JOIN ppl_scores p USING (sample_id) GROUP BY g, s.task)")
            counts = {"groups": n}
        seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu0,
                      "peak_rss": process_memory("VmHWM"), "spilled": spill.peak, "counts": counts}))


class _SpillWatch(threading.Thread):
    """Largest size of DuckDB's spill folder (``<catalog>.tmp``, the default temp_directory) while a block runs,
    polled every 0.2 s."""

    def __init__(self, folder: Path):
        super().__init__(daemon=True)
        self.folder, self.peak, self._done = folder, 0, threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.2):
            size = 0
            for f in self.folder.glob("*"):
                with contextlib.suppress(OSError):
                    size += f.stat().st_blocks * 512
            self.peak = max(self.peak, size)

    def __enter__(self) -> _SpillWatch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self.join()


def settings_args(args: argparse.Namespace) -> list[str]:
    return ["--threads", str(args.threads), "--memory-limit", args.memory_limit] + (["--unordered"] if args.unordered else [])


def measure(path: Path, args: argparse.Namespace, mode: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--db", str(path), *settings_args(args)],
                         capture_output=True, text=True, cwd=REPO_ROOT)
    if out.returncode:
        sys.exit(f"{mode} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--groups", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-limit", default="3GB", help="DuckDB memory_limit (it spills beyond it)")
    ap.add_argument("--child", choices=["policy", "groupby"], help=argparse.SUPPRESS)
    ap.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--build-memory-limit", default="3GB", help="DuckDB memory_limit while the synthetic catalog "
                    "is built (its primary-key indexes must fit in memory: ~0.1 GB per 10^6 samples)")
    ap.add_argument("--unordered", action="store_true", help="preserve_insertion_order = false (CatalogSettings)")
    ap.add_argument("--tmp", type=Path, default=None, help="folder of the synthetic catalog and DuckDB's spill "
                    "files (default: the system temp folder; 10^8 rows take ~25 GB there)")
    args = ap.parse_args()
    from core.settings import CatalogSettings

    settings = CatalogSettings(threads=args.threads, memory_limit=args.memory_limit,
                               preserve_insertion_order=not args.unordered)
    if args.child:
        run_child(args.db, settings, args.child)
        return
    with tempfile.TemporaryDirectory(prefix="dedup-bench-", dir=args.tmp) as tmp:
        db = Path(tmp) / "bench.duckdb"
        build_s = build(db, args.rows, args.groups,
                        settings.model_copy(update={"memory_limit": args.build_memory_limit}))
        floor = measure(db, args, "groupby")
        pol = measure(db, args, "policy")
    gib = 1024 ** 3
    print(f"rows={args.rows:,} groups={args.groups:,} threads={args.threads} memory_limit={args.memory_limit} "
          f"(synthetic catalog built in {build_s:.1f} s; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs -- on a shared machine wall time > CPU time / threads)")
    print(f"{'step':<34}{'wall s':>9}{'CPU s':>9}{'peak RSS GiB':>14}{'spilled GiB':>13}")
    for name, r in (("GROUP BY floor (baseline)", floor), ("dedup policy -> dedup_decisions", pol)):
        print(f"{name:<34}{r['seconds']:>9.1f}{r['cpu_seconds']:>9.1f}{r['peak_rss'] / gib:>14.2f}"
              f"{r['spilled'] / gib:>13.2f}")
    if args.rows >= 100_000_000:
        target, met = "< 300 s wall at 10^8 rows", pol["seconds"] < 300
    elif args.rows >= 10_000_000:
        target, met = "< 30 s wall and < 4 GiB at 10M rows", pol["seconds"] < 30 and pol["peak_rss"] < 4 * gib
    else:
        target, met = f"none at {args.rows:,} rows", None
    verdict = "n/a" if met is None else "met" if met else "NOT met"
    print(f"policy / floor time: {pol['seconds'] / floor['seconds']:.1f}x   target ({target}): {verdict}")
    print("decisions:", json.dumps(pol["counts"]))


if __name__ == "__main__":
    main()
