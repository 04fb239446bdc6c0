"""Flows on a Ray cluster reached by address: a separate `ray start --head` on 127.0.0.1, not in-process Ray.

The curate flow runs in a subprocess with the head's address from the settings file (as a cluster user
sets it), and Ray's own job table on that head shows the flow's driver.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import duckdb
import pytest
import yaml

from core.processes import free_port
from flows_helpers import copy_workspace

BIN = Path(sys.executable).parent
# Ray >= 2.5x authenticates clients of a `ray start` cluster with a token (~/.ray/auth_token on this
# machine); drivers joining it by address must run in token mode too.
AUTH = {"RAY_AUTH_MODE": "token"}


@pytest.fixture
def ray_head():
    """A Ray head in its own process group (killed as a group, so the session's own Ray is untouched)."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's unix socket paths must fit 107 chars
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **AUTH}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
         f"--temp-dir={temp_dir}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the GCS answers once the head is up
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.5)
    else:
        pytest.fail("ray head did not come up")
    yield address
    os.killpg(head.pid, signal.SIGTERM)
    head.wait(timeout=60)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _jobs_on(address: str) -> int:
    """How many jobs the head's GCS job table holds (the state API's list_jobs needs the dashboard, which this
    head does not run)."""
    probe = subprocess.run(
        [sys.executable, "-c", "import ray; from ray._private.state import jobs; "
         f"ray.init(address='{address}', log_to_driver=False); "
         "print(len(jobs()))"],
        capture_output=True, text=True, timeout=300,
        env={**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **AUTH})
    assert probe.returncode == 0, probe.stderr[-2000:]
    return int(probe.stdout.strip().splitlines()[-1])


def _curation_keys(catalog: Path) -> dict[str, set]:
    """What curation decided, by key (texts and scores are left out: the same model may sample other words
    in another process): samples, media, captioned media, scored samples, dedup verdicts, mixture members."""
    queries = {
        "samples": "SELECT sample_id FROM samples",
        "media": "SELECT media_hash FROM media",
        "captions": "SELECT media_hash, captioner FROM captions",
        "merged": "SELECT media_hash FROM merged_captions",
        "ppl": "SELECT sample_id FROM ppl_scores",
        "dedup": "SELECT sample_id, kept FROM dedup_decisions",
        "heldout": "SELECT sample_id FROM heldout",
        "members": "SELECT mixture, stage, sample_id FROM mixture_members WHERE mixture LIKE 'demo-stage%'",
    }
    con = duckdb.connect(str(catalog), read_only=True)
    try:
        return {what: set(con.execute(sql).fetchall()) for what, sql in queries.items()}
    finally:
        con.close()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_curate_flow_runs_on_a_ray_head_by_address(ray_head, demo_workspace, reference, tmp_path, run_flow):
    """The whole curate flow (ingest, captions, perplexity, dedup, mixtures, shards) with its Ray Data steps on
    the head named in the settings file decides what the session's in-process end-to-end run decided."""
    ws = copy_workspace(demo_workspace, tmp_path / "ws")
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"work_dir": str(ws / "mavors-work"), "ray": {"address": ray_head}}))
    before = _jobs_on(ray_head)
    env = {"MAVORS_CONFIG": str(settings), **AUTH}
    proc = run_flow(ws, "curate", env=env, unset=("RAY_ADDRESS",))
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"

    con = duckdb.connect(str(ws / "mavors-work" / "catalog.duckdb"), read_only=True)
    try:
        counts = dict(con.execute(
            "SELECT 'samples', count(*) FROM samples UNION ALL SELECT 'media', count(*) FROM media "
            "UNION ALL SELECT 'merged', count(*) FROM merged_captions UNION ALL SELECT 'ppl', count(*) FROM ppl_scores "
            "UNION ALL SELECT 'shards', count(*) FROM shards").fetchall())
        shard_files = [r[0] for r in con.execute("SELECT path FROM shards").fetchall()]
    finally:
        con.close()
    assert all(counts[k] > 0 for k in counts), counts
    ours, theirs = _curation_keys(ws / "mavors-work" / "catalog.duckdb"), \
        _curation_keys(reference[0] / "mavors-work" / "catalog.duckdb")
    for what in ours:
        assert ours[what] == theirs[what], f"{what} differs between the Ray head and the in-process run"
    for path in shard_files:  # every recorded shard is a readable tar
        p = Path(path) if Path(path).is_absolute() else ws / "mavors-work" / path  # relative to the catalog's folder
        with tarfile.open(p) as tar:
            assert tar.getmembers()
    # the flow's driver joined that cluster: one more job in the head's table after the run
    after = _jobs_on(ray_head)
    assert after >= before + 2, (before, after)  # the flow's driver, then this probe
