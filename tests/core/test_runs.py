"""Run recording (core.runs.recorded_run): one ``runs`` row per command, ended however its body ends.

    pytest tests/core/test_runs.py -q

Rows are read back with plain SQL (duckdb), not through the code under test.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import duckdb
import pytest

from core.catalog import Catalog
from core.faults import FAULT_ENV
from core.runs import DETAIL_CHARS, recorded_run


def _runs(path) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute("SELECT run_id, command, status, detail, parameters, pid, started_at <= ended_at "
                           "FROM runs ORDER BY started_at").fetchall()


def test_a_completed_run_keeps_its_parameters_and_detail(tmp_path):
    path = tmp_path / "catalog.duckdb"
    with recorded_run(path, "dedup run", {"policy": "paper"}) as run:
        run.detail = '{"kept": 3}'
    [(run_id, command, status, detail, parameters, pid, ordered)] = _runs(path)
    assert (run_id, command, status, detail) == (run.run_id, "dedup run", "completed", '{"kept": 3}')
    assert json.loads(parameters) == {"policy": "paper"} and pid == os.getpid() and ordered


def test_a_failed_run_records_the_exception_and_reraises_it(tmp_path):
    path = tmp_path / "catalog.duckdb"
    with pytest.raises(ValueError, match="no mixture"):
        with recorded_run(path, "shards select"):
            raise ValueError("no mixture named demo")
    assert [r[2:4] for r in _runs(path)] == [("failed", "ValueError: no mixture named demo")]


def test_a_long_failure_message_is_cut_to_the_stored_length(tmp_path):
    path = tmp_path / "catalog.duckdb"
    with pytest.raises(RuntimeError):
        with recorded_run(path, "eval run"):
            raise RuntimeError("x" * 5000)
    [row] = _runs(path)
    assert row[3] == ("RuntimeError: " + "x" * 5000)[:DETAIL_CHARS] and len(row[3]) == 2000


def test_ctrl_c_marks_the_run_interrupted(tmp_path):
    path = tmp_path / "catalog.duckdb"
    with pytest.raises(KeyboardInterrupt):
        with recorded_run(path, "ingest"):
            raise KeyboardInterrupt
    assert [r[2:4] for r in _runs(path)] == [("interrupted", "KeyboardInterrupt")]


def test_given_a_path_the_catalog_is_not_held_inside_the_block(tmp_path):
    """A child process (a trainer rank, an evaluation child) can open the catalog while the run is going."""
    path = tmp_path / "catalog.duckdb"
    code = ("import sys; from core.catalog import Catalog\n"
            "with Catalog(sys.argv[1]) as c: print(c.scalar('SELECT status FROM runs'))")
    with recorded_run(path, "train") as run:
        child = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["running"]
    assert [r[:3] for r in _runs(path)] == [(run.run_id, "train", "completed")]


def test_given_an_open_catalog_its_connection_records_the_run(tmp_path):
    with Catalog(tmp_path / "catalog.duckdb") as cat:
        with recorded_run(cat, "captions run", run_id="run-7") as run:
            assert cat.con.execute("SELECT run_id, status FROM runs").fetchall() == [("run-7", "running")]
        assert run.run_id == "run-7"
        assert cat.con.execute("SELECT status FROM runs").fetchall() == [("completed",)]  # still open, still ours


def test_one_row_per_run_whatever_the_body_writes_under_its_id(tmp_path):
    with Catalog(tmp_path / "catalog.duckdb") as cat:
        with recorded_run(cat, "ingest") as run:
            cat.quarantine([{"source": "s", "item": "1", "reason": "zero_byte", "run_id": run.run_id}])
        with recorded_run(cat, "ingest") as second:
            pass
        assert cat.con.execute("SELECT run_id FROM runs ORDER BY started_at").fetchall() == [
            (run.run_id,), (second.run_id,)]
        assert cat.con.execute("SELECT run_id FROM quarantine").fetchall() == [(run.run_id,)]


def test_a_run_killed_at_its_fault_point_stays_running_until_the_next_run(tmp_path):
    """``MAVORS_FAULT_AT=<command>``: SIGKILL when the body returns, before the run is recorded completed."""
    path = tmp_path / "catalog.duckdb"
    code = ("import sys; from core.runs import recorded_run\n"
            "with recorded_run(sys.argv[1], 'dedup run'): print('body done', flush=True)\n"
            "print('recorded', flush=True)")
    child = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                           env={**os.environ, FAULT_ENV: "dedup run"})
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout.split("\n")[:2] == ["body done", ""]
    assert [r[1:3] for r in _runs(path)] == [("dedup run", "running")]
    with recorded_run(path, "dedup run"):
        pass
    assert [r[2] for r in _runs(path)] == ["interrupted", "completed"]


def test_a_run_started_inside_another_records_it_as_its_parent(tmp_path):
    """The end-to-end flow's parts are runs of their own; each names the run it ran inside, at any depth, and
    a run after the block is top-level again."""
    path = tmp_path / "catalog.duckdb"
    with recorded_run(path, "end_to_end") as outer:
        with recorded_run(path, "curate") as part:
            with recorded_run(path, "ingest") as inner:
                pass
        with pytest.raises(ValueError):
            with recorded_run(path, "train") as failed:
                raise ValueError("bad spec")
    with recorded_run(path, "report") as after:
        pass
    with duckdb.connect(str(path), read_only=True) as con:
        parents = dict(con.execute("SELECT run_id, parent_run_id FROM runs").fetchall())
    assert parents == {outer.run_id: None, part.run_id: outer.run_id, inner.run_id: part.run_id,
                       failed.run_id: outer.run_id, after.run_id: None}
