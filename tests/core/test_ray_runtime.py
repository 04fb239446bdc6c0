"""A locally started Ray leaves no process behind when its driver is SIGKILLed (core.ray_reaper).

Without the reaper, Ray's DashboardAgent and RuntimeEnvAgent outlived the killed driver by more than 30 s
in 3 of 3 runs of the slow test.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from core.processes import project_env
from core.ray_reaper import reap, session_processes

DRIVER = """
import os, sys, time
from core.ray_runtime import ensure_ray
from core.settings import RaySettings
ensure_ray(RaySettings(num_cpus=2, object_store_mb=128))
import ray
@ray.remote
def pid():
    return os.getpid()
ray.get([pid.remote() for _ in range(2)])
print('ready', flush=True)
time.sleep(600)
"""
NAMES = ("raylet", "gcs_server", "ray::DashboardAgent", "ray::RuntimeEnvAgent")


def _missing(procs: list[psutil.Process]) -> list[str]:
    names = [p.name() for p in procs]
    return [n for n in NAMES if not any(name.startswith(n[:15]) for name in names)]  # comm is cut at 15 chars


def _ray_descendants(driver: psutil.Process, timeout: float = 60.0) -> list[psutil.Process]:
    """The driver's descendants once Ray's agents are up (they start a moment after ray.init returns)."""
    deadline = time.monotonic() + timeout
    while True:
        procs = driver.children(recursive=True)
        if not _missing(procs) or time.monotonic() > deadline:
            return procs
        time.sleep(0.5)


def test_reaper_ends_only_ray_processes_of_its_session(tmp_path):
    session, other = tmp_path / "session_a", tmp_path / "session_b"
    for d in (session, other):
        (d / "logs").mkdir(parents=True)
    def holding(title: str, folder):  # a process titled ``title`` with a log file open under ``folder``
        return subprocess.Popen(["bash", "-c", f"exec -a {title} sleep 600 > {folder}/logs/{title[-1]}.out"])
    ours = holding("ray::FakeAgent", session)
    not_ray = holding("not-ray-at-all", session)  # its files are there, but it is no Ray process
    elsewhere = holding("ray::OtherSession", other)
    try:
        time.sleep(0.5)
        assert [p.pid for p in session_processes(session)] == [ours.pid]
        assert reap(session) == [ours.pid]
        ours.wait(timeout=10)  # ended (reap() collected its exit status already)
        assert not_ray.poll() is None and elsewhere.poll() is None
    finally:
        for p in (ours, not_ray, elsewhere):
            p.kill()
            p.wait()


@pytest.mark.slow
def test_sigkilled_driver_leaves_no_ray_process(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True,
                             env=project_env({"RAY_USAGE_STATS_ENABLED": "0"}), cwd=tmp_path)
    try:
        assert child.stdout.readline().strip() == "ready"
        procs = _ray_descendants(psutil.Process(child.pid))
        assert not _missing(procs), [p.name() for p in procs]
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        # psutil.Process remembers each one's start time: a reused pid does not count as alive.
        _, alive = psutil.wait_procs(procs, timeout=30)
        assert not alive, f"left running after the driver's SIGKILL: {[(p.pid, p.name()) for p in alive]}"
    finally:
        if child.poll() is None:
            child.kill()
