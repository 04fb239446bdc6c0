"""Child processes the platform starts (trainer launchers, evaluation children, servers): a free port to
rendezvous on, a command run to completion with its output in a log file, and a process's memory as the kernel
counts it.
"""
from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from core.paths import REPO_ROOT


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_memory(field: str = "VmHWM", pid: int | str = "self") -> int:
    """Bytes of one memory line of ``/proc/PID/status``: ``VmHWM`` (peak RSS) or ``VmRSS`` (RSS now). Peaks are
    read here, not from ``getrusage().ru_maxrss``: Linux carries the spawning process's RSS over fork and exec
    into ``ru_maxrss``, so a child started by a 1.2 GB pytest reported a 1.2 GB peak whatever it did itself."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"/proc/{pid}/status has no {field} line")


def project_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the checkout first on ``PYTHONPATH``, so a child started as
    ``python -m trainers.stage`` (or by a launcher) imports this very code."""
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **(extra or {})}


def run_logged(cmd: list[str], log_path: Path, *, cwd: Path | None = None,
               env: Mapping[str, str] | None = None, what: str = "command",
               poll: Callable[[], None] | None = None, poll_s: float = 1.0) -> None:
    """Run ``cmd`` to completion, stdout and stderr appended to ``log_path``; on a non-zero exit raise
    naming the log and showing its last lines. ``poll()`` runs every ``poll_s`` seconds while the child
    runs (a progress follower reading what the child writes)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=project_env(env),
                                 cwd=cwd or REPO_ROOT)
        try:
            while True:
                try:
                    rc = child.wait(timeout=poll_s if poll is not None else None)
                    break
                except subprocess.TimeoutExpired:
                    poll()
        finally:
            if child.poll() is None:  # interrupted (Ctrl-C, a failing poll): the child goes with us
                child.kill()
                child.wait()
        if poll is not None:
            poll()
    if rc != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"{what} exited with {rc}; log {log_path}:\n" + "\n".join(tail))
