"""Benchmark: the catalog-heavy steps of the demo -- ingest of the demo corpus, `catalog stats`, a run report --
with the number of DuckDB files opened for each (the catalog opens its file per read or transaction; the
report and stats hold one connection for their reads, as their commands do).

    python benchmarks/catalog.py                              # ~30 s on 2 cores
    python benchmarks/catalog.py --catalog mavors-work/catalog.duckdb --repeat 5

Ingest runs in-process (no Ray) into a fresh catalog; stats and the report read a copy of ``--catalog``
(default: a catalog the benchmark fills by ingesting the demo corpus; a `mavors demo` catalog has every
table filled). Each figure is the median of ``--repeat`` runs.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

_opens = 0
_connect = duckdb.connect


def _counting_connect(*args, **kwargs):
    global _opens
    _opens += 1
    return _connect(*args, **kwargs)


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, int]:
    """Median seconds of ``repeat`` calls and the DuckDB connects of one call."""
    global _opens
    times, opens = [], 0
    for _ in range(repeat):
        _opens = 0
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        opens = _opens
    return statistics.median(times), opens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--catalog", type=Path, help="A filled catalog to read for stats and the report.")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    duckdb.connect = _counting_connect

    from core.catalog import Catalog
    from curation.ingest import ingest
    from curation.sources import load_manifests
    from demo.corpus import generate
    from pipelines.report.html import write_report
    from pipelines.report.sections import CATALOG_STATS, build_sections

    tmp = Path(tempfile.mkdtemp(prefix="bench-catalog-"))
    demo = generate(tmp / "demo")
    manifests = load_manifests(sorted((demo / "manifests").glob("*.yaml")))

    def fresh_ingest() -> None:
        shutil.rmtree(tmp / "work", ignore_errors=True)
        with Catalog(tmp / "work" / "catalog.duckdb") as cat:
            ingest(manifests, cat, workers=0, run_id="bench")

    rows = [("ingest demo corpus, fresh catalog", *timed(fresh_ingest, args.repeat))]
    filled = tmp / "filled.duckdb"
    shutil.copy(args.catalog or tmp / "work" / "catalog.duckdb", filled)

    def stats() -> None:  # as `mavors catalog stats` and `mavors report` read: one open for the block
        with Catalog(filled) as cat, cat.connection():
            build_sections(cat, CATALOG_STATS)

    with Catalog(filled) as cat:  # the outermost newest run (a demo's end-to-end run)
        run_id = cat.scalar("SELECT run_id FROM runs WHERE parent_run_id IS NULL ORDER BY started_at DESC LIMIT 1")

    def report() -> None:
        with Catalog(filled) as cat, cat.connection():
            write_report(cat, run_id, tmp / "report.html")

    rows.append(("catalog stats sections", *timed(stats, args.repeat)))
    rows.append(("report of the newest run", *timed(report, args.repeat)))
    print(f"{'step':<36} {'seconds':>8} {'files opened':>13}")
    for name, sec, opens in rows:
        print(f"{name:<36} {sec:8.2f} {opens:13d}")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
