"""Scheduled deployments served against a real Prefect server on 127.0.0.1, triggered once.

    pytest tests/pipelines/flows/test_deployments.py -x -q

``mavors serve`` runs in a subprocess against ``prefect server start`` on a free port (schedules
need a real server, not the test harness's). The nightly-curation deployment is triggered once;
the dpo-regeneration deployment is triggered by the event the train flow emits when a Stage-2
export appears. Each flow run executes in the runner's child process and must appear in the
catalog's ``runs`` table under Prefect's flow-run id, completed.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import yaml

from flows_helpers import copy_workspace


def test_deployments_are_scheduled_and_typed():
    """Each deployment carries its cron, a concurrency limit of one and parameters its flow validates."""
    from pipelines.deployments import SCHEDULES, build_deployments

    deployments = {d.name: d for d in build_deployments()}
    assert set(deployments) == set(SCHEDULES)
    for name, d in deployments.items():
        assert [s.schedule.cron for s in d.schedules] == [SCHEDULES[name]]
        assert d.concurrency_limit == 1
        assert d.entrypoint.startswith("pipelines.flows.")
    trigger = deployments["dpo-regeneration"].triggers[0]
    assert trigger.expect == {"mavors.stage.exported"}
    quick = build_deployments(only=["training"], interval_s=60)
    assert [s.schedule.interval.total_seconds() for s in quick[0].schedules] == [60]


def test_training_deployment_passes_the_launch_settings_through():
    """``launch`` travels as a JSON object among the flow's parameters and comes back as the same ``Launch``."""
    from pipelines.deployments import build_deployments
    from pipelines.flows.train import train
    from trainers.launch import Launch

    given = {"hostfile": "/data/mavors/hostfile", "master_addr": "worker-0", "ssh": True}
    [deployment] = build_deployments(only=["training"], parameters={"training": {"launch": given}})
    stored = json.loads(json.dumps(deployment.parameters))
    assert stored["params"]["launch"] == {"hostfile": "/data/mavors/hostfile", "procs_per_node": 1,
                                          "master_addr": "worker-0", "master_port": 29500, "ssh": True,
                                          "node_rank": 0}
    params = train.validate_parameters(stored)["params"]
    assert params.launch == Launch(hostfile=Path("/data/mavors/hostfile"), master_addr="worker-0", ssh=True)


def test_demo_defaults_are_refused_against_cluster_settings(tmp_path):
    """With a settings file naming a Ray cluster, a parameter left at the demo's default stops the deployment."""
    from pipelines.deployments import DemoDefaultsError, build_deployments

    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("work_dir: /data/mavors\nray:\n  address: auto\n")
    with pytest.raises(DemoDefaultsError) as err:
        build_deployments(config=cluster, only=["training"])
    message = str(err.value)
    assert "'training'" in message and "stages=['demo-stage1', 'demo-stage1_5', 'demo-stage2']" in message
    assert "run_name=demo" in message and "--allow-demo-defaults" in message and "\n" not in message
    with pytest.raises(DemoDefaultsError, match="dpo-regeneration.*mixture=.*demo-dpo.yaml"):
        build_deployments(config=cluster, only=["dpo-regeneration"],
                          parameters={"dpo-regeneration": {"stage": "stage2"}})
    # the user's own values pass; so does the demo when asked for, and the embedded settings never refuse
    [ok] = build_deployments(config=cluster, only=["training"],
                             parameters={"training": {"stages": ["stage1"], "run_name": "paper"}})
    assert ok.parameters["params"]["stages"] == ["stage1"]
    assert len(build_deployments(config=cluster, allow_demo_defaults=True)) == 3
    assert len(build_deployments()) == 3


def test_serve_refuses_demo_defaults_before_starting_a_server(tmp_path):
    """``mavors serve`` against cluster settings with demo defaults exits with the one-line refusal and
    leaves no Prefect server (no server log in the work dir, nothing listening after it)."""
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(f"work_dir: {tmp_path / 'work'}\nray:\n  address: auto\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "--config", str(cluster), "serve",
                           "--only", "training"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'training' would run the demo's defaults" in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "work" / "prefect-server.log").exists()
    assert "Prefect server on" not in done.stdout


@pytest.mark.timeout(300)
def test_ui_command_shows_the_runs_recorded_in_the_work_dir(tmp_path):
    """``mavors ui`` serves Prefect's UI over the ephemeral runs of a work dir, wired to its own API port."""
    import urllib.request

    work = tmp_path / "mavors-work"
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME")}
    # a flow run in ephemeral mode, as `mavors demo` makes them: its database is <work_dir>/prefect
    made = subprocess.run(
        [sys.executable, "-c", "import sys; from pipelines.flows import configure_prefect; "
         "configure_prefect(sys.argv[1]); from prefect import flow; "
         "flow(name='ui-probe')(lambda: 7)()", str(work)],
        env=env, capture_output=True, text=True, timeout=240)
    assert made.returncode == 0, made.stderr[-3000:]
    ui = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "ui", "--work-dir", str(work)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = []
        while not any("export PREFECT_API_URL=" in line for line in lines):
            line = ui.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        api_url = lines[-1].split("export PREFECT_API_URL=")[1].strip()
        ui_line = next(line for line in lines if line.startswith("Prefect UI: "))
        base = ui_line.split()[2]
        assert base == api_url.removesuffix("/api") and base.startswith("http://127.0.0.1:")
        for page in ("", "/deployments", "/runs"):
            with urllib.request.urlopen(base + page, timeout=30) as r:
                assert r.status == 200 and b"<!DOCTYPE html>" in r.read(200)
        with urllib.request.urlopen(base + "/ui-settings", timeout=30) as r:
            assert json.load(r)["api_url"] == api_url  # the UI calls this server, not 127.0.0.1:4200
        request = urllib.request.Request(f"{api_url}/flow_runs/filter", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as r:
            runs = json.load(r)
        assert [(run["state_type"]) for run in runs] == ["COMPLETED"]
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_served_deployment_runs_into_the_catalog(reference, tmp_path):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipelines.deployments import start_local_server

    ws = copy_workspace(reference[0], tmp_path / "ws")
    (ws / "serve-params.yaml").write_text(yaml.safe_dump(
        {name: {"work_dir": "mavors-work", "use_ray": False, "use_cache": False}
         for name in ("nightly-curation", "dpo-regeneration")}))
    server, api_url = start_local_server(log_path=tmp_path / "server.log")
    serve = None
    try:
        env = {**os.environ, "PREFECT_API_URL": api_url}
        serve = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "serve", "--only", "nightly-curation",
             "--only", "dpo-regeneration", "--params", "serve-params.yaml"],
            cwd=ws, env=env, stdout=open(tmp_path / "serve.log", "wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            deployment = _wait_for_deployment(api_url, "curate/nightly-curation", serve, tmp_path)
            assert deployment.schedules and deployment.schedules[0].schedule.cron == "0 2 * * *"
            flow_run = run_deployment("curate/nightly-curation", timeout=900)
            assert flow_run.state.is_completed(), (flow_run.state, (tmp_path / "serve.log").read_text()[-4000:])
            # a new Stage-2 export, announced by the train flow's own emitter (in a process of its own, as a
            # training run on another machine would), starts a dpo-regeneration run
            dpo = _wait_for_deployment(api_url, "dpo_regenerate/dpo-regeneration", serve, tmp_path)
            export = ws / "mavors-work" / "train" / "demo" / "demo-stage2" / "export"
            emit = subprocess.run(
                [sys.executable, "-c", "import sys; from pipelines.flows.train import _emit_exported; "
                 "from prefect.events.worker import EventsWorker; "
                 "_emit_exported('demo-stage2', {'export': sys.argv[1], 'status': 'completed'}); "
                 "EventsWorker.drain_all()", str(export)],
                cwd=ws, env=env, capture_output=True, text=True, timeout=300)
            assert emit.returncode == 0, emit.stderr[-3000:]
            triggered = _wait_for_completed_run(dpo.id, serve, tmp_path)
    finally:
        for proc in (serve, server):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
    con = duckdb.connect(str(ws / "mavors-work" / "catalog.duckdb"), read_only=True)
    try:
        row = con.execute("SELECT command, status, code_version FROM runs WHERE run_id = ?",
                          [str(flow_run.id)]).fetchone()
        dpo_row = con.execute("SELECT command, status FROM runs WHERE run_id = ?", [str(triggered.id)]).fetchone()
    finally:
        con.close()
    assert row is not None and row[0] == "curate" and row[1] == "completed" and row[2]
    assert dpo_row == ("dpo_regenerate", "completed"), dpo_row


def _wait_for_deployment(api_url: str, name: str, serve: subprocess.Popen, tmp_path, timeout_s: float = 300):
    """The deployment as the server has it, once ``mavors serve`` registered it."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-4000:]
            try:
                return client.read_deployment_by_name(name)
            except ObjectNotFound:
                time.sleep(1)
    raise TimeoutError(f"{name} was not registered within {timeout_s} s")


def _wait_for_completed_run(deployment_id, serve: subprocess.Popen, tmp_path, timeout_s: float = 900):
    """The first flow run of a deployment once it reached a final state (it must have completed)."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-4000:]
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
            done = [r for r in runs if r.state is not None and r.state.is_final()]
            if done:
                assert done[0].state.is_completed(), (done[0].state, (tmp_path / "serve.log").read_text()[-4000:])
                return done[0]
            time.sleep(2)
    raise TimeoutError(f"no run of deployment {deployment_id} finished within {timeout_s} s "
                       f"(the event trigger did not fire?)\n{(tmp_path / 'serve.log').read_text()[-4000:]}")
