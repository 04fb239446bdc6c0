"""Flows and readers on one catalog at the same time: `mavors catalog query` while a curate flow runs, and a
curate flow and a train flow (nightly curation while a training run records its stages) run to completion
together, each with all of its rows.

    pytest tests/pipelines/flows/test_flow_concurrency.py -q -m slow      # ~5 min on 2 cores
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from core.catalog import Catalog
from flows_helpers import catalog_snapshot, copy_workspace

pytestmark = pytest.mark.slow

CURATE_TABLES = ("sources", "media", "samples", "quarantine", "captions", "merged_captions", "ppl_scores",
                 "dedup_decisions", "heldout", "mixtures", "mixture_members", "shards")


def _start_flow(workspace: Path, flow: str, prefect_api: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "flow", "run", flow, "--work-dir", "mavors-work", "--no-ray", *args],
        cwd=workspace, env={**os.environ, "PREFECT_API_URL": prefect_api}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 1200) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _reading(catalog: Path) -> dict | None:
    """What a reader sees now (None before the flow created the file)."""
    if not catalog.exists():
        return None
    with Catalog(catalog, read_only=True) as cat, cat.connection():
        if not cat.has_table("runs"):
            return None
        return {"running": cat.scalar("SELECT count(*) FROM runs WHERE command = 'curate' AND status = 'running'"),
                **{t: cat.scalar(f"SELECT count(*) FROM {t}") for t in ("samples", "captions", "shards")}}


@pytest.fixture(scope="module")
def curated(prefect_api, demo_workspace, tmp_path_factory):
    """A curate flow run, the catalog read (in this process) all along and once by `mavors catalog query` while
    it had samples and was still running: (workspace, readings, query result)."""
    ws = copy_workspace(demo_workspace, tmp_path_factory.mktemp("concurrent") / "ws")
    catalog = ws / "mavors-work" / "catalog.duckdb"
    flow = _start_flow(ws, "curate", prefect_api)
    readings, query = [], None
    while flow.poll() is None:
        got = _reading(catalog)
        if got is not None:
            readings.append(got)
            if query is None and got["running"] and got["samples"]:
                query = subprocess.run(
                    [sys.executable, "-m", "pipelines.cli", "catalog", "query",
                     "SELECT count(*) AS n FROM runs WHERE command = 'curate' AND status = 'running'"],
                    cwd=ws, env={**os.environ, "MAVORS_CONFIG": ""}, capture_output=True, text=True, timeout=300)
        time.sleep(0.5)
    _finish(flow)
    return ws, readings, query


def test_the_catalog_reads_while_a_curate_flow_runs(curated):
    ws, readings, query = curated
    during = [r for r in readings if r["running"]]
    assert len(during) >= 3, readings
    assert any(r["samples"] for r in during), "no reading saw the flow's ingest while it ran"
    for a, b in zip(readings, readings[1:]):  # a reader sees commits in order: counts never go back
        assert all(b[t] >= a[t] for t in ("samples", "captions", "shards")), (a, b)
    assert query is not None and query.returncode == 0, query and query.stderr[-2000:]
    assert "│ 1 │" in query.stdout and "1 rows" in query.stdout  # it saw the curate run as running
    final = _reading(ws / "mavors-work" / "catalog.duckdb")
    assert final["running"] == 0 and final["shards"] > 0 and final["samples"] >= max(r["samples"] for r in readings)


def test_a_curate_flow_and_a_train_flow_run_together_to_completion(curated, prefect_api, demo_workspace,
                                                                     tmp_path_factory):
    """In a fresh work dir: curate from scratch while the train flow trains demo-stage1 on the shards of the
    first run and records its stage. Both complete; curate's rows equal those of the curate run alone."""
    first, _, _ = curated
    with Catalog(first / "mavors-work" / "catalog.duckdb", read_only=True) as cat:
        shard_dir = cat.resolved(cat.scalar(
            "SELECT path FROM shards WHERE mixture = 'demo-stage1' AND stage = '1' LIMIT 1")).parent
    ws = copy_workspace(demo_workspace, tmp_path_factory.mktemp("concurrent") / "ws")
    params = ws / "train.yaml"
    params.write_text(yaml.safe_dump({"stages": ["demo-stage1"], "data": {"demo-stage1": str(shard_dir)},
                                      "evaluate": False, "report": False}))
    curate = _start_flow(ws, "curate", prefect_api)
    train = _start_flow(ws, "train", prefect_api, "--params", str(params))
    _finish(train)
    _finish(curate)

    catalog = ws / "mavors-work" / "catalog.duckdb"
    with Catalog(catalog, read_only=True) as cat, cat.connection():
        runs = {r["command"]: r for r in cat.query("SELECT command, run_id, status, started_at, ended_at FROM runs")}
        stages = cat.query("SELECT stage, run_id FROM train_stages")
    assert {c: r["status"] for c, r in runs.items()} == {"curate": "completed", "train": "completed"}
    assert runs["train"]["started_at"] < runs["curate"]["ended_at"]  # they overlapped
    assert runs["curate"]["started_at"] < runs["train"]["ended_at"]
    assert stages == [{"stage": "demo-stage1", "run_id": runs["train"]["run_id"]}]
    alone = catalog_snapshot(first / "mavors-work" / "catalog.duckdb", first)
    together = catalog_snapshot(catalog, ws)
    for table in CURATE_TABLES:
        assert together[table] == alone[table], table
