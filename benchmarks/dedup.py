"""Benchmark: the PPL dedup policy SQL (curation/dedup.py) on synthetic catalogs -- time and peak RSS.

    python benchmarks/dedup.py                       # 10M score rows, 1M media groups, 2 DuckDB threads
    python benchmarks/dedup.py --rows 2000000 --groups 200000

Builds a catalog with ``--rows`` samples (half QA, half captions, each with one
media hash drawn from ``--groups`` groups, 5% text-only) and a PPL score for
each, then runs the paper policy (QA keep-2-lowest, caption random-1-of-2-lowest)
in a fresh subprocess so its peak RSS is the policy run's alone. Target: < 30 s
and < 4 GiB at 10M rows on 2 cores. Baseline in the same run: a plain
``GROUP BY`` over the same rows (the floor any grouping pass pays).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core.paths import REPO_ROOT


def build(path: Path, rows: int, groups: int, threads: int) -> float:
    from core.catalog import Catalog

    t0 = time.perf_counter()
    with Catalog(path) as cat:
        cat.con.execute(f"SET threads = {threads}")
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


def run_child(path: Path, threads: int, memory_limit: str, mode: str) -> None:
    """Run in a subprocess: the policy (``policy``) or the GROUP BY floor (``groupby``); print JSON."""
    from core.catalog import Catalog
    from curation.dedup import DedupPolicy, TaskRule, run_policy

    with Catalog(path) as cat:
        cat.con.execute(f"SET threads = {threads}")
        cat.con.execute(f"SET memory_limit = '{memory_limit}'")
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
                      "peak_rss": usage.ru_maxrss * 1024, "counts": counts}))


def measure(path: Path, threads: int, memory_limit: str, mode: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--db", str(path), "--threads",
                          str(threads), "--memory-limit", memory_limit],
                         capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--groups", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-limit", default="3GB", help="DuckDB memory_limit (it spills beyond it)")
    ap.add_argument("--child", choices=["policy", "groupby"], help=argparse.SUPPRESS)
    ap.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_child(args.db, args.threads, args.memory_limit, args.child)
        return
    with tempfile.TemporaryDirectory(prefix="dedup-bench-") as tmp:
        db = Path(tmp) / "bench.duckdb"
        build_s = build(db, args.rows, args.groups, args.threads)
        floor = measure(db, args.threads, args.memory_limit, "groupby")
        pol = measure(db, args.threads, args.memory_limit, "policy")
    gib = 1024 ** 3
    print(f"rows={args.rows:,} groups={args.groups:,} threads={args.threads} memory_limit={args.memory_limit} "
          f"(synthetic catalog built in {build_s:.1f} s; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs -- on a shared machine wall time > CPU time / threads)")
    print(f"{'step':<34}{'wall s':>9}{'CPU s':>9}{'peak RSS GiB':>14}")
    for name, r in (("GROUP BY floor (baseline)", floor), ("dedup policy -> dedup_decisions", pol)):
        print(f"{name:<34}{r['seconds']:>9.1f}{r['cpu_seconds']:>9.1f}{r['peak_rss'] / gib:>14.2f}")
    verdict = ("met" if pol["seconds"] < 30 and pol["peak_rss"] < 4 * gib else "NOT met") \
        if args.rows >= 10_000_000 else f"not applicable at {args.rows:,} rows"
    print(f"policy / floor time: {pol['seconds'] / floor['seconds']:.1f}x   "
          f"target (< 30 s wall and < 4 GiB at 10M rows): {verdict}")
    print("decisions:", json.dumps(pol["counts"]))


if __name__ == "__main__":
    main()
