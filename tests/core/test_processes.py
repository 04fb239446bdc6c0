"""Child processes: a free rendezvous port, a command run into a log file, the checkout on the child's path."""
from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest

from core.processes import free_port, process_memory, project_env, run_logged

CHECKOUT = Path(__file__).resolve().parents[2]  # tests/core/ -> the repository root


def test_free_port_is_bindable():
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # raises if something holds it
        s.listen()


def test_run_logged_appends_output_and_runs_in_the_checkout(tmp_path):
    log = tmp_path / "logs" / "child.log"
    log.parent.mkdir()
    log.write_text("earlier run\n")
    script = "import os, sys; print('out', flush=True); print('err', file=sys.stderr, flush=True); print(os.getcwd())"
    run_logged([sys.executable, "-c", script], log)
    run_logged([sys.executable, "-c", "print('second')"], log)
    assert log.read_text().splitlines() == ["earlier run", "out", "err", str(CHECKOUT), "second"]


def test_run_logged_failure_names_the_log_and_shows_its_tail(tmp_path):
    log = tmp_path / "new" / "eval.log"  # its folder does not exist yet
    script = "import sys\nfor i in range(1, 21): print(f'line {i:02d}')\nsys.exit(3)"
    with pytest.raises(RuntimeError) as err:
        run_logged([sys.executable, "-c", script], log, cwd=tmp_path, what="evaluation")
    message = str(err.value)
    assert message.splitlines()[0] == f"evaluation exited with 3; log {log}:"
    assert message.splitlines()[1:] == [f"line {i:02d}" for i in range(6, 21)]  # the last 15 lines
    assert len(log.read_text().splitlines()) == 20


def test_project_env_puts_the_checkout_first_on_pythonpath(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = project_env({"MAVORS_X": "1"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(CHECKOUT), "/elsewhere"]
    assert env["MAVORS_X"] == "1" and env["PATH"] == os.environ["PATH"]
    monkeypatch.delenv("PYTHONPATH")
    assert project_env()["PYTHONPATH"] == str(CHECKOUT)
    # a child started elsewhere imports this checkout's code
    log = tmp_path / "import.log"
    run_logged([sys.executable, "-c", "import core.processes as p; print(p.__file__)"], log, cwd=tmp_path)
    assert log.read_text().strip() == str(CHECKOUT / "core" / "processes.py")


def test_run_logged_polls_while_the_child_runs_and_once_after(tmp_path):
    """``poll`` sees what the child has written so far (a progress follower), and once more after it exits."""
    out = tmp_path / "steps.txt"
    script = ("import time, pathlib\np = pathlib.Path(r'%s')\nfor i in range(1, 4):\n"
              "    p.write_text(str(i)); time.sleep(0.3)\n" % out)
    seen = []
    run_logged([sys.executable, "-c", script], tmp_path / "child.log",
               poll=lambda: seen.append(int(out.read_text()) if out.exists() else 0), poll_s=0.1)
    assert seen[-1] == 3 and len(seen) >= 4  # polled during the ~0.9 s run, then after the exit
    assert seen == sorted(seen) and {1, 2} <= set(seen)


def test_process_memory_counts_the_child_alone_not_the_parent_it_was_spawned_from():
    """A child that touches 64 MiB, started by a parent holding 512 MiB more: its VmHWM covers its own 64 MiB and
    stays far below the parent's size, while ``ru_maxrss`` (what the peak was read from before) reports the
    parent's RSS."""
    import subprocess

    held = bytearray(512 * 2**20)
    held[::4096] = b"\1" * len(held[::4096])  # resident, not just reserved
    code = ("import json, resource; from core.processes import process_memory; x = bytearray(64 * 2**20); "
            "x[::4096] = b'\\1' * len(x[::4096]); print(json.dumps([process_memory('VmHWM'), process_memory('VmRSS'),"
            " resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=project_env(), check=True)
    hwm, rss, maxrss = json.loads(out.stdout)
    assert 64 * 2**20 <= hwm < 256 * 2**20 and rss <= hwm
    assert maxrss > 512 * 2**20  # the kernel's carry-over this helper avoids
    del held
    with pytest.raises(ValueError, match="no VmNope line"):
        process_memory("VmNope")
