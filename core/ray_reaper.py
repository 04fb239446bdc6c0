"""Kill what a locally started Ray session leaves behind when its driver dies without shutting Ray down.

    python -m core.ray_reaper DRIVER_PID SESSION_DIR    (started by core.ray_runtime.ensure_ray)

Why: Ray's head processes fate-share with the driver, but the agents the raylet starts
(``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) and idle workers only notice their parent's death
by polling, and after a SIGKILL of the driver they were left running in 2 of 5 kills. This small process,
in its own session so a kill of the driver's process group spares it, waits for the driver to end and then
ends every process of that Ray session.

A process belongs to the session when it holds a file open under the session's directory (every Ray
process does: its log files; the agents and workers rename themselves ``ray::...`` and clobber their
command line, so that is the one mark they all keep) or names that directory on its command line; and it
must look like a Ray process (a ``ray::`` title, or Ray's installed code or binaries on its command line),
so nothing else is ever signalled.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

TERM_GRACE_S = 3.0
"""Seconds between SIGTERM and SIGKILL for the session's processes."""


def start_reaper(session_dir: str | Path, driver_pid: int | None = None) -> None:
    """Start the reaper for the Ray session in ``session_dir`` of ``driver_pid`` (default: this process).
    It detaches (forks and its first process exits), so it is no child of the driver."""
    from core.processes import project_env

    subprocess.run(
        [sys.executable, "-m", __name__, str(driver_pid or os.getpid()), str(session_dir)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, env=project_env(), check=True,
    )


def wait_for_exit(pid: int) -> None:
    """Return once process ``pid`` has ended (a pidfd wakes us; no polling where the kernel has them)."""
    try:
        create_time = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfds (old kernel): poll, minding a reused pid
        while True:
            try:
                if psutil.Process(pid).create_time() != create_time:
                    return
            except psutil.NoSuchProcess:
                return
            time.sleep(0.5)
    try:
        select.select([fd], [], [])
    finally:
        os.close(fd)


def _ray_install_dir() -> str:
    """Where the ``ray`` package is installed (found without importing it)."""
    import importlib.util

    return next(iter(importlib.util.find_spec("ray").submodule_search_locations))


def _is_ray_process(proc: psutil.Process, ray_dir: str) -> bool:
    cmdline = proc.cmdline()
    return bool(cmdline) and (cmdline[0].startswith("ray::") or any(ray_dir in arg for arg in cmdline))


def session_processes(session_dir: str | Path) -> list[psutil.Process]:
    """The live Ray processes of the session in ``session_dir`` (see the module docstring), not this one."""
    session_dir, ray_dir = str(session_dir).rstrip("/"), _ray_install_dir()
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            ours = (any(session_dir in arg for arg in proc.cmdline())
                    or any(f.path.startswith(session_dir + "/") for f in proc.open_files()))
            if ours and _is_ray_process(proc, ray_dir):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def reap(session_dir: str | Path) -> list[int]:
    """SIGTERM the session's processes, SIGKILL those left after :data:`TERM_GRACE_S`, until none is found
    (a raylet still alive may start one more worker meanwhile); returns their pids."""
    reaped: list[int] = []
    for _ in range(3):
        procs = session_processes(session_dir)
        if not procs:
            break
        _end(procs)
        reaped += [p.pid for p in procs]
    return reaped


def _end(procs: list[psutil.Process]) -> None:
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=TERM_GRACE_S)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=TERM_GRACE_S)


def main(argv: list[str] | None = None) -> None:
    driver_pid, session_dir = (argv or sys.argv[1:])[:2]
    if os.fork():  # detach: the starter waits only for this first process
        os._exit(0)
    wait_for_exit(int(driver_pid))
    reap(session_dir)


if __name__ == "__main__":
    main()
