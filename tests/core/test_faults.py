"""Fault injection (core.faults): the ``MAVORS_FAULT_AT`` forms, and each trigger killing a child process.

    pytest tests/core/test_faults.py -q

Every trigger is checked on a child python process that must die of SIGKILL at the right point: what
it printed before dying, and (for commits) what a stock duckdb reader finds committed in its file.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from core.faults import FAULT_ENV, Fault, armed_fault, fault_point, parse_fault


def _child(code: str, fault: str, *args: str, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, FAULT_ENV: fault}, **popen)


@pytest.mark.parametrize("text, fault", [
    ("captions", Fault("captions")),
    ("train-demo-stage1_5:20", Fault("train-demo-stage1_5", seconds=20.0)),
    ("dedup run:0.5", Fault("dedup run", seconds=0.5)),
    ("captions#2", Fault("captions", commits=2)),
    ("trainer-mp@3", Fault("trainer-mp", step=3)),
])
def test_each_form_parses_to_its_trigger(text, fault):
    assert parse_fault(text) == fault


@pytest.mark.parametrize("text", ["", "#2", "captions:", "captions:soon", "captions#0", "trainer@1.5",
                                  "a:1#2"])
def test_malformed_specs_are_refused_naming_the_variable(text):
    with pytest.raises(ValueError, match=FAULT_ENV):
        parse_fault(text)


def test_only_the_named_point_is_armed(monkeypatch):
    monkeypatch.delenv(FAULT_ENV, raising=False)
    assert armed_fault("captions") is None
    monkeypatch.setenv(FAULT_ENV, "shards#2")
    assert armed_fault("captions") is None and armed_fault("shards") == Fault("shards", commits=2)
    with fault_point("captions") as callbacks:  # not armed: a plain block, no loop callbacks
        assert callbacks == []


def test_a_commit_trigger_needs_a_catalog_to_watch(monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "trainer-mp#1")
    with pytest.raises(ValueError, match="no catalog to watch"):
        with fault_point("trainer-mp"):
            pass


END = """
from core.faults import fault_point
with fault_point("p"):
    print("inside", flush=True)
print("after", flush=True)
"""


def test_the_plain_form_kills_when_the_point_returns():
    killed = _child(END, "p")
    assert killed.returncode == -signal.SIGKILL
    assert killed.stdout == "inside\n"
    assert "fault injection: SIGKILL during step p (at its end)" in killed.stderr
    assert _child(END, "q").returncode == 0  # another point's fault leaves this one alone


TICKS = """
import time
from core.faults import fault_point
start = time.monotonic()
with fault_point("p"):
    for _ in range(100):
        time.sleep(0.1)
        print(round(time.monotonic() - start, 2), flush=True)
"""


def test_the_seconds_form_kills_that_long_after_the_point_started():
    killed = _child(TICKS, "p:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    last = float(killed.stdout.split()[-1])
    assert 0.8 <= last <= 3.0, killed.stdout  # uninterrupted, the loop would print until 10 s
    assert "(1 s after it started)" in killed.stderr


RAISES = """
import time
from core.faults import fault_point
try:
    with fault_point("p"):
        raise RuntimeError("the step failed")
except RuntimeError:
    time.sleep(1.5)
print("survived", flush=True)
"""


def test_a_point_that_raises_stops_its_timer():
    """A failed step (retried by Prefect) must not be killed later by the timer of its failed try."""
    done = _child(RAISES, "p:0.5")
    assert (done.returncode, done.stdout) == (0, "survived\n"), done.stderr


COMMITS = """
import sys, time
import duckdb
from core.faults import fault_point
con = duckdb.connect(sys.argv[1])
con.execute("CREATE TABLE t (i INTEGER)")
with fault_point("p", sys.argv[1]):
    for i in range(1, 30):
        con.execute("INSERT INTO t VALUES (?)", [i])   # one commit each
        time.sleep(0.3)
"""


def test_the_commits_form_kills_after_that_many_commits(tmp_path):
    path = tmp_path / "c.duckdb"
    killed = _child(COMMITS, "p#2", str(path))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT i FROM t ORDER BY i").fetchall() == [(1,), (2,)]
    assert "(after 2 catalog commit(s))" in killed.stderr


LOOP = """
from core.faults import fault_point
with fault_point("trainer-toy") as callbacks:
    for cb in callbacks:
        cb.on_start(0)
    for step in range(1, 10):
        print(step, flush=True)
        for cb in callbacks:
            cb.on_step(step, {})
"""


def test_the_step_form_kills_right_after_that_training_step():
    killed = _child(LOOP, "trainer-toy@3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert killed.stdout.split() == ["1", "2", "3"]
    assert "SIGKILL during step trainer-toy (after training step 3)" in killed.stderr


GROUP = """
import subprocess
from core.faults import fault_point
grandchild = subprocess.Popen(["sleep", "60"])
print(grandchild.pid, flush=True)
with fault_point("p"):
    pass
"""


def _gone(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split(") ")[1][0] == "Z"  # a zombie waiting to be reaped is dead too
    except FileNotFoundError:
        return True


def test_a_process_group_leader_takes_its_children_with_it():
    """The flow process leads its group: the trainer subprocesses die with it, as on a machine failure."""
    killed = _child(GROUP, "p", start_new_session=True)
    assert killed.returncode == -signal.SIGKILL
    pid = int(killed.stdout.split()[0])
    deadline = time.monotonic() + 10
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(pid)
