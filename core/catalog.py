"""The catalog: one DuckDB file that records every sample, caption, score, decision, shard and run.

Schema lives in ``manifests/schema/NNNN_name.sql``; files are applied in order,
once each, and the applied versions are recorded in ``schema_version``. A
feature adds tables by adding a file.

DuckDB allows one writing *process* per file (a second process cannot even open
it read-only). The rule in this project: parallel workers (Ray tasks/actors,
DeepSpeed ranks) never open the catalog; they return rows to the driver, and the
driver writes them in one transaction per unit of work. Two flows that must run
at the same time on one machine use two catalog files, or run one after the
other (Prefect's concurrency limit on the ``catalog`` tag does that).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import socket
import subprocess
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from core.paths import MANIFESTS, REPO_ROOT, resolved, stored

SCHEMA_DIR = MANIFESTS / "schema"
DEFAULT_CATALOG = Path("mavors-work") / "catalog.duckdb"
_SCHEMA_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
PATH_COLUMNS: dict[str, set[str]] = {
    "sources": {"path", "media_root", "manifest_path"},
    "media": {"storage_path"},
    "captions": {"model_path"},
    "merged_captions": {"model_path"},
    "ppl_scores": {"model_path"},
    "mixtures": {"manifest_path"},
    "shard_media": {"path"},
    "shards": {"path"},
    "dpo_pair_sets": {"checkpoint_path", "shard_dir"},
    "dpo_inputs": {"audit_path"},
    "dpo_pairs": {"media_paths", "rejected_media_path"},
    "train_stages": {"run_dir", "spec_path", "export_path"},
    "evals": {"checkpoint"},
}
"""Columns holding file paths. :meth:`Catalog.insert` stores them with :func:`core.paths.stored` against the
catalog's folder (relative inside it, absolute outside); readers that open a file use :meth:`Catalog.resolved`."""


class CatalogError(RuntimeError):
    """The catalog file cannot be opened or migrated."""


def schema_files(schema_dir: Path = SCHEMA_DIR) -> list[tuple[int, str, Path]]:
    """Schema files as (version, name, path), ordered; a duplicate version is an error."""
    found: dict[int, tuple[int, str, Path]] = {}
    for path in sorted(schema_dir.glob("*.sql")):
        m = _SCHEMA_FILE.match(path.name)
        if not m:
            raise CatalogError(f"{path}: schema files are named NNNN_name.sql")
        version = int(m.group(1))
        if version in found:
            raise CatalogError(f"{path}: schema version {version} also used by {found[version][2].name}")
        found[version] = (version, m.group(2), path)
    return [found[v] for v in sorted(found)]


def code_version() -> str:
    """``git describe`` of the checkout the code runs from, else the package version."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=5, check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("mavors")
        except PackageNotFoundError:
            return "unknown"


def _unwritable(path: Path, cause: str) -> str:
    """The error for a catalog whose file or folder cannot be written (read-only filesystem, permissions)."""
    folder = next((p for p in [path.parent, *path.parents] if p.exists()), path.parent)
    return (f"{path}: cannot write the catalog: the work folder {folder} is read-only or not writable ({cause}); "
            "point work_dir / catalog_path (mavors --config) at a writable folder, or open it read-only")


class Catalog:
    """A connection to the catalog file, migrated to the newest schema on open.

    Use as a context manager, or call :meth:`close`. All writes of one unit of
    work go through :meth:`transaction`, so a crash leaves nothing half-written.
    """

    def __init__(self, path: str | Path = DEFAULT_CATALOG, *, read_only: bool = False,
                 schema_dir: Path = SCHEMA_DIR):
        self.path = Path(path)
        if not read_only:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise CatalogError(_unwritable(self.path, e.strerror)) from e
        elif not self.path.exists():
            raise CatalogError(f"{self.path}: no catalog here (run an ingest first)")
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.IOException as e:
            if not read_only and not os.access(self.path if self.path.exists() else self.path.parent, os.W_OK):
                raise CatalogError(_unwritable(self.path, str(e))) from e
            if "lock" not in str(e).lower():
                raise CatalogError(f"{self.path}: cannot open the catalog ({e})") from e
            raise CatalogError(
                f"{self.path}: cannot open the catalog ({e}). DuckDB lets one process hold the file; "
                "stop the other process (another flow or CLI command) or use another catalog path."
            ) from e
        if not read_only:
            self.migrate(schema_dir)

    # -- lifecycle -----------------------------------------------------------------
    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema --------------------------------------------------------------------
    def migrate(self, schema_dir: Path = SCHEMA_DIR) -> list[int]:
        """Apply the schema files not applied yet, each in its own transaction; returns their versions."""
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMP DEFAULT current_timestamp)"
        )
        done = {r[0] for r in self.con.execute("SELECT version FROM schema_version").fetchall()}
        applied = []
        for version, name, path in schema_files(schema_dir):
            if version in done:
                continue
            with self.transaction() as con:
                con.execute(path.read_text())
                con.execute("INSERT INTO schema_version (version, name) VALUES (?, ?)", [version, name])
            applied.append(version)
        if applied:
            # Into the database file now, not left in the WAL: DuckDB replaying a killed process's WAL binds
            # the views' functions and tries to download the 'core_functions' extension, which fails offline.
            self.con.execute("CHECKPOINT")
        return applied

    def schema_version(self) -> int:
        row = self.con.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    # -- stored paths ----------------------------------------------------------------
    @property
    def root(self) -> Path:
        """The folder stored paths are relative to: the catalog file's (the work dir, by default)."""
        return Path(os.path.abspath(self.path.parent))

    def stored(self, path: Any) -> Any:
        """A path (or list of paths; None stays None) as the catalog stores it (:data:`PATH_COLUMNS`)."""
        if path is None:
            return None
        if isinstance(path, (list, tuple)):
            return [self.stored(p) for p in path]
        return stored(path, self.root)

    def resolved(self, path: str | Path) -> Path:
        """A path read from a :data:`PATH_COLUMNS` column as one to open, from any working directory."""
        return resolved(path, self.root)

    # -- reads and writes ------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """BEGIN ... COMMIT, or ROLLBACK on any exception (including KeyboardInterrupt)."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield self.con
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """Rows as dicts."""
        cur = self.con.execute(sql, params or [])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        row = self.con.execute(sql, params or []).fetchone()
        return None if row is None else row[0]

    def has_table(self, name: str) -> bool:
        """Whether table ``name`` exists (an area's tables appear with its schema file or its first write)."""
        return bool(self.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]))

    def insert(self, table: str, rows: Iterable[Mapping[str, Any]], *, on_conflict: str = "error",
               con: duckdb.DuckDBPyConnection | None = None) -> int:
        """Insert dict rows by column name in one statement (fast for many rows).

        ``on_conflict``: ``error`` (default), ``ignore`` (keep the existing row) or
        ``replace`` (overwrite it). JSON columns take Python objects (dumped here).
        Returns the number of rows offered.
        """
        rows = list(rows)
        if not rows:
            return 0
        paths = PATH_COLUMNS.get(table, set()) & set(rows[0])
        if paths:
            rows = [{**r, **{c: self.stored(r[c]) for c in paths}} for r in rows]
        verb = {"error": "INSERT", "ignore": "INSERT OR IGNORE", "replace": "INSERT OR REPLACE"}[on_conflict]
        json_cols = self._json_columns(table)
        cols = list(rows[0].keys())
        data = {c: [_cell(r.get(c), c in json_cols) for r in rows] for c in cols}
        arrow = pa.table(data)
        target = con or self.con
        name = f"_ins_{uuid.uuid4().hex}"
        target.register(name, arrow)
        try:
            target.execute(f"{verb} INTO {table} BY NAME SELECT * FROM {name}")
        finally:
            target.unregister(name)
        return len(rows)

    def _json_columns(self, table: str) -> set[str]:
        rows = self.con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ? AND data_type = 'JSON'",
            [table],
        ).fetchall()
        return {r[0] for r in rows}

    # -- common records --------------------------------------------------------------
    def quarantine(self, rows: Iterable[Mapping[str, Any]], *,
                   con: duckdb.DuckDBPyConnection | None = None) -> int:
        """Record refused items: each row has source, item, reason, detail, and optionally stage, run_id.

        The same (source, item, stage, reason) recorded twice stays one row, so reruns add nothing.
        """
        # Every key column must be present for INSERT OR IGNORE ... BY NAME to see conflicts.
        rows = [{"stage": "ingest", "detail": None, **r} for r in rows]
        return self.insert("quarantine", rows, on_conflict="ignore", con=con)

    def start_run(self, command: str, parameters: Mapping[str, Any] | None = None,
                  run_id: str | None = None, parent_run_id: str | None = None) -> str:
        """Record a run as ``running`` (with this host and process id, and the run it runs inside, if any);
        returns its id. A given run_id that exists is restarted. Runs left ``running`` by a dead process of
        this host become ``interrupted``."""
        run_id = run_id or f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        self.mark_interrupted_runs(noticed_by=run_id)
        self.insert("runs", [{
            "run_id": run_id, "command": command, "parameters": dict(parameters or {}),
            "code_version": code_version(), "started_at": dt.datetime.now(dt.UTC).replace(tzinfo=None),
            "ended_at": None, "status": "running", "detail": None, "host": socket.gethostname(), "pid": os.getpid(),
            "parent_run_id": parent_run_id,
        }], on_conflict="replace")
        return run_id

    def mark_interrupted_runs(self, noticed_by: str | None = None) -> list[str]:
        """Mark ``interrupted`` the ``running`` runs of this host whose process no longer exists (killed or
        crashed before it could record an end); returns their ids. Runs of other hosts are left as they are:
        their processes cannot be checked from here."""
        host = socket.gethostname()
        gone = [(r["run_id"], r["pid"]) for r in self.query(
            "SELECT run_id, pid FROM runs WHERE status = 'running' AND host = ? AND pid IS NOT NULL", [host])
            if not _process_alive(r["pid"])]
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        for run_id, pid in gone:
            self.con.execute(
                "UPDATE runs SET status = 'interrupted', ended_at = ?, detail = ? WHERE run_id = ?",
                [now, f"process {pid} on {host} ended without finishing the run (killed or crashed)"
                      + (f"; noticed when run {noticed_by} started" if noticed_by else ""), run_id])
        return [run_id for run_id, _ in gone]

    def finish_run(self, run_id: str, status: str = "completed", detail: str | None = None) -> None:
        """Record the end of a run (``completed``, ``failed`` or ``interrupted``); entry points end their
        runs through :func:`core.runs.recorded_run`, which picks the status."""
        self.con.execute(
            "UPDATE runs SET status = ?, detail = ?, ended_at = ? WHERE run_id = ?",
            [status, detail, dt.datetime.now(dt.UTC).replace(tzinfo=None), run_id],
        )


def _process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (a reused id counts as alive: never a false
    ``interrupted``)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _cell(value: Any, is_json: bool) -> Any:
    if is_json and value is not None and not isinstance(value, str):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return value
