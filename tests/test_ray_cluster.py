"""Parallel work on a Ray cluster reached by address: a separate `ray start --head` on 127.0.0.1, not in-process Ray.

The ingest command (Ray Data hash + probe, the flows' first step) runs with the head's address from the
settings file, and Ray's own state API on that head shows the command's driver job.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

BIN = Path(sys.executable).parent
# Ray >= 2.5x authenticates clients of a `ray start` cluster with a token (~/.ray/auth_token on this
# machine); drivers joining it by address must run in token mode too.
AUTH = {"RAY_AUTH_MODE": "token"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A Ray head in its own process group (killed as a group, so the session's own Ray is untouched)."""
    port = _free_port()
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


@pytest.mark.slow
def test_ingest_runs_on_a_ray_head_by_address(ray_head, tmp_path):
    work = tmp_path / "mavors-work"
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"work_dir": str(work), "ray": {"address": ray_head}}))
    env = {**os.environ, "MAVORS_CONFIG": str(settings), "PREFECT_HOME": str(tmp_path / "prefect"), **AUTH}
    env.pop("RAY_ADDRESS", None)
    mavors = [sys.executable, "-m", "pipelines.cli"]
    gen = subprocess.run(mavors + ["demo-data", str(work / "demo")], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert gen.returncode == 0, gen.stderr[-3000:]
    manifests = sorted(str(p) for p in (work / "demo" / "manifests").glob("*.yaml"))
    proc = subprocess.run(mavors + ["ingest", *manifests], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"

    import duckdb

    con = duckdb.connect(str(work / "catalog.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM samples").fetchone()[0] > 0
    assert con.execute("SELECT count(*) FROM media").fetchone()[0] > 0
    con.close()
    # the ingest driver was a job of that cluster (Ray's own state API on the head's address)
    probe = subprocess.run(
        # GCS's job table (the state API's list_jobs needs the dashboard, which this head does not run)
        [sys.executable, "-c", "import ray; from ray._private.state import jobs; "
         f"ray.init(address='{ray_head}', log_to_driver=False); "
         "print(len(jobs()))"],
        capture_output=True, text=True, timeout=300,
        env={**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **AUTH})
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert int(probe.stdout.strip().splitlines()[-1]) >= 2  # the ingest driver, then this probe
