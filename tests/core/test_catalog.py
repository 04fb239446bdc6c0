"""Catalog: versioned migrations, transactions, insert modes, quarantine and run records.

    pytest tests/core/test_catalog.py -q
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from core.catalog import SCHEMA_DIR, Catalog, CatalogError, schema_files


def _write(schema_dir, name, sql):
    schema_dir.mkdir(exist_ok=True)
    (schema_dir / name).write_text(sql)


def test_migrations_apply_in_order_once_and_record_versions(tmp_path):
    schema = tmp_path / "schema"
    _write(schema, "0002_b.sql", "CREATE TABLE b (x INTEGER REFERENCES a(x));")  # needs 0001 applied first
    _write(schema, "0001_a.sql", "CREATE TABLE a (x INTEGER PRIMARY KEY);")
    path = tmp_path / "c.duckdb"
    with Catalog(path, schema_dir=schema) as cat:
        assert cat.query("SELECT version, name FROM schema_version ORDER BY version") == [
            {"version": 1, "name": "a"}, {"version": 2, "name": "b"}]
        assert cat.schema_version() == 2
    _write(schema, "0003_c.sql", "CREATE TABLE c (y TEXT);")
    with Catalog(path, schema_dir=schema) as cat:  # reopening applies only the new file
        assert cat.schema_version() == 3
        assert cat.migrate(schema) == []
        assert cat.scalar("SELECT count(*) FROM schema_version") == 3


def test_failed_migration_leaves_nothing_and_is_retried(tmp_path):
    schema = tmp_path / "schema"
    _write(schema, "0001_a.sql", "CREATE TABLE a (x INTEGER); CREATE TABLE broken (;")
    path = tmp_path / "c.duckdb"
    with pytest.raises(duckdb.Error):
        Catalog(path, schema_dir=schema)
    _write(schema, "0001_a.sql", "CREATE TABLE a (x INTEGER);")
    with Catalog(path, schema_dir=schema) as cat:
        assert cat.schema_version() == 1
        assert cat.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = 'a'") == 1


def test_schema_file_names_and_versions_are_checked(tmp_path):
    _write(tmp_path / "s1", "0001_a.sql", "")
    _write(tmp_path / "s1", "0001_b.sql", "")
    with pytest.raises(CatalogError, match="also used by 0001_a.sql"):
        schema_files(tmp_path / "s1")
    _write(tmp_path / "s2", "1_core.sql", "")
    with pytest.raises(CatalogError, match="NNNN_name.sql"):
        schema_files(tmp_path / "s2")


def test_shipped_schema_creates_core_tables(catalog):
    tables = {r["table_name"] for r in catalog.query("SELECT table_name FROM information_schema.tables")}
    assert {"sources", "media", "samples", "quarantine", "runs", "schema_version"} <= tables
    assert catalog.schema_version() == max(v for v, _, _ in schema_files(SCHEMA_DIR))


def test_transaction_rolls_back_on_error(catalog):
    row = {"media_hash": "a" * 64, "kind": "image", "bytes": 3, "storage_path": "/x.jpg"}
    with pytest.raises(RuntimeError):
        with catalog.transaction() as con:
            catalog.insert("media", [row], con=con)
            raise RuntimeError("crash inside the unit of work")
    assert catalog.scalar("SELECT count(*) FROM media") == 0
    with catalog.transaction() as con:
        catalog.insert("media", [row], con=con)
    assert catalog.scalar("SELECT count(*) FROM media") == 1


def test_insert_conflict_modes_and_json_lists(catalog):
    conv = [{"from": "human", "value": "<image>\nWhat is it? é"}, {"from": "gpt", "value": "A cat."}]
    row = {"sample_id": "s/1", "source": "s", "item": "1", "task": "qa", "conversation": conv,
           "media_hashes": ["h1", "h2"], "stage_hints": ["2"], "content_sha256": "c1"}
    assert catalog.insert("samples", [row]) == 1
    with pytest.raises(duckdb.ConstraintException):
        catalog.insert("samples", [{**row, "content_sha256": "c2"}])
    catalog.insert("samples", [{**row, "content_sha256": "c2"}], on_conflict="ignore")
    assert catalog.scalar("SELECT content_sha256 FROM samples") == "c1"
    catalog.insert("samples", [{**row, "content_sha256": "c3"}], on_conflict="replace")
    got = catalog.query("SELECT * FROM samples")
    assert len(got) == 1 and got[0]["content_sha256"] == "c3"
    assert json.loads(got[0]["conversation"]) == conv
    assert got[0]["media_hashes"] == ["h1", "h2"]


def test_quarantine_same_refusal_twice_is_one_row(catalog):
    rows = [{"source": "s", "item": "7", "reason": "zero_byte", "detail": "empty", "stage": "ingest", "run_id": "r1"}]
    catalog.quarantine(rows)
    catalog.quarantine([{**rows[0], "run_id": "r2"}])
    catalog.quarantine([{**rows[0], "reason": "bad_json"}])
    assert catalog.query("SELECT reason, run_id FROM quarantine ORDER BY reason") == [
        {"reason": "bad_json", "run_id": "r1"}, {"reason": "zero_byte", "run_id": "r1"}]


def test_run_records(catalog):
    run = catalog.start_run("ingest", {"sources": ["a"]})
    assert catalog.scalar("SELECT status FROM runs WHERE run_id = ?", [run]) == "running"
    catalog.finish_run(run, "completed", "ok")
    got = catalog.query("SELECT * FROM runs")[0]
    assert got["status"] == "completed" and got["ended_at"] >= got["started_at"]
    assert json.loads(got["parameters"]) == {"sources": ["a"]}


def test_a_run_whose_process_died_is_marked_interrupted_by_the_next_run(tmp_path):
    path = tmp_path / "catalog.duckdb"
    # a run started by a process that then dies without finishing it (the os._exit of a SIGKILL)
    code = ("import os, sys; from core.catalog import Catalog; c = Catalog(sys.argv[1]); "
            "print(c.start_run('curate', {})); os._exit(0)")
    dead = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    dead_id = dead.stdout.split()[-1]
    with Catalog(path) as cat:
        cat.insert("runs", [{"run_id": "elsewhere", "command": "train", "status": "running", "host": "gpu-node-7",
                             "pid": 1}])
        mine = cat.start_run("curate", {})
        got = {r["run_id"]: r for r in cat.query("SELECT run_id, status, detail, ended_at, host, pid FROM runs")}
    assert got[dead_id]["status"] == "interrupted" and got[dead_id]["ended_at"] is not None
    assert f"noticed when run {mine} started" in got[dead_id]["detail"]
    assert got["elsewhere"]["status"] == "running"  # another host's process cannot be checked from here
    assert got[mine]["status"] == "running" and got[mine]["pid"] == os.getpid()
    assert got[mine]["host"] == socket.gethostname()


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nothing can be written to: a read-only tmpfs for root (mode bits do not stop root),
    mode 0555 otherwise; skipped where neither works."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (root without CAP_SYS_ADMIN)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("where", ["catalog in the folder", "catalog in a subfolder to create"])
def test_a_read_only_work_folder_is_named_as_read_only(read_only_folder, where):
    path = read_only_folder / ("catalog.duckdb" if where == "catalog in the folder" else "work/catalog.duckdb")
    with pytest.raises(CatalogError) as e:
        Catalog(path)
    assert f"the work folder {read_only_folder} is read-only" in str(e.value)
    assert "other process" not in str(e.value)


def test_a_catalog_killed_right_after_its_migrations_reopens_offline(tmp_path):
    """A process that dies after migrating and writing one row leaves a catalog the next one opens.

    DuckDB replays the WAL of a killed process; replaying the views' DDL binds their functions and tries to
    download the ``core_functions`` extension, which fails offline. The schema must be checkpointed.
    """
    path = tmp_path / "catalog.duckdb"
    code = ("import os, sys; from core.catalog import Catalog; c = Catalog(sys.argv[1])\n"
            "with c.connection() as con:  # killed while it holds the file, its insert in the WAL\n"
            "    con.execute(\"INSERT INTO sources (name, modality, task, format, path) "
            "VALUES ('s', 'image', 'qa', 'llava_json', 'a.json')\"); os._exit(0)")
    killed = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert killed.returncode == 0, killed.stderr[-2000:]
    con = duckdb.connect(str(path))  # a stock reader, with its default extension autoloading
    try:
        assert con.execute("SELECT name FROM sources").fetchall() == [("s",)]
        assert con.execute("SELECT count(*) FROM sample_overview").fetchone() == (0,)
    finally:
        con.close()


def test_paths_inside_the_catalog_folder_are_stored_relative_and_resolve_from_anywhere(tmp_path, monkeypatch):
    """The stored-path rule: under the catalog's folder relative to it, elsewhere absolute; a relative input is
    taken against the writer's working directory, and reading works from any other one (a moved folder too)."""
    work = tmp_path / "work"
    (work / "media").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with Catalog(Path("work") / "catalog.duckdb") as cat:
        cat.insert("media", [
            {"media_hash": "a" * 64, "kind": "image", "bytes": 1, "storage_path": "work/media/a.jpg"},  # cwd-relative
            {"media_hash": "b" * 64, "kind": "image", "bytes": 1, "storage_path": str(work / "media" / "b.jpg")},
            {"media_hash": "c" * 64, "kind": "image", "bytes": 1, "storage_path": "/datasets/c.jpg"}])
    with duckdb.connect(str(work / "catalog.duckdb"), read_only=True) as con:
        assert [r[0] for r in con.execute("SELECT storage_path FROM media ORDER BY media_hash").fetchall()] == [
            "media/a.jpg", "media/b.jpg", "/datasets/c.jpg"]
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    work.rename(moved)
    monkeypatch.chdir(moved.parent)
    with Catalog(Path("moved") / "catalog.duckdb", read_only=True) as cat:
        paths = [cat.resolved(r["storage_path"]) for r in cat.query("SELECT storage_path FROM media ORDER BY 1")]
    assert paths == [Path("/datasets/c.jpg"), moved / "media" / "a.jpg", moved / "media" / "b.jpg"]


def test_duckdb_settings_apply_when_the_file_is_opened_and_come_from_the_settings_file(tmp_path, monkeypatch):
    from core.settings import CatalogSettings

    settings = CatalogSettings(threads=1, memory_limit="100MB", temp_directory=tmp_path / "spill")
    with Catalog(tmp_path / "a.duckdb", settings=settings) as cat, cat.connection():
        got = [cat.scalar(f"SELECT current_setting('{k}')") for k in ("threads", "memory_limit", "temp_directory")]
    assert got[0] == 1 and got[1] in ("95.3 MiB", "100.0 MB") and got[2] == str(tmp_path / "spill")
    (tmp_path / "settings.yaml").write_text("duckdb: {threads: 1, memory_limit: 200MB}\n")
    monkeypatch.setenv("MAVORS_CONFIG", str(tmp_path / "settings.yaml"))
    with Catalog(tmp_path / "b.duckdb") as cat:
        assert cat.scalar("SELECT current_setting('memory_limit')") in ("190.7 MiB", "200.0 MB")
