"""The catalog: one DuckDB file that records every sample, caption, score, decision, shard and run.

Schema lives in ``manifests/schema/NNNN_name.sql``; files are applied in order,
once each, and the applied versions are recorded in ``schema_version``. A
feature adds tables by adding a file.

DuckDB lets one *process* hold the file (a second process cannot even open it
read-only). So a :class:`Catalog` holds no connection between operations: each
read, insert or transaction opens the file, does its work and closes it, and a
process that finds the file held by another waits for it (jittered backoff, up
to :data:`LOCK_WAIT_S`). Readers (``mavors catalog query``, a report) thereby
get in between a running flow's writes, and two flows share one catalog: the
lock is held for one transaction at a time. Parallel workers (Ray tasks/actors,
DeepSpeed ranks) never open the catalog (refused in a Ray worker); they return
rows to the driver, which writes them in one transaction per unit of work.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from core.paths import MANIFESTS, REPO_ROOT, resolved, stored
from core.settings import CatalogSettings, load_settings

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


LOCK_WAIT_S = 120.0
"""How long opening the catalog waits while another process holds the file, before failing with an error that
names the holder (``MAVORS_CATALOG_LOCK_WAIT_S`` overrides it; ``Catalog(lock_wait_s=)`` for one catalog).
The longest hold is one transaction (a dedup policy over 10M rows: ~20 s). Cluster: 120 s as well."""
_BACKOFF_S = (0.02, 1.0)
"""First and longest pause between attempts; each pause doubles, times a random factor in [0.5, 1.5) so that
waiting processes do not retry in step."""


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
    """The catalog file, migrated to the newest schema on open.

    Use as a context manager, or call :meth:`close`. It holds no connection between operations (see the
    module docstring); a block that needs one connection for several statements (session settings, a cursor
    read in parts) uses :meth:`connection`. All writes of one unit of work go through :meth:`transaction`, so
    a crash leaves nothing half-written.
    """

    def __init__(self, path: str | Path = DEFAULT_CATALOG, *, read_only: bool = False,
                 schema_dir: Path = SCHEMA_DIR, lock_wait_s: float | None = None,
                 settings: CatalogSettings | None = None):
        self.path = Path(path)
        self.read_only = read_only
        # DuckDB settings apply when this process opens the file; another Catalog already holding it keeps its own.
        self.settings = settings if settings is not None else load_settings().duckdb
        self.lock_wait_s = _lock_wait_s() if lock_wait_s is None else lock_wait_s
        self._held = threading.local()  # the connection of this thread's current operation, if any
        if not read_only:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise CatalogError(_unwritable(self.path, e.strerror)) from e
        elif not self.path.exists():
            raise CatalogError(f"{self.path}: no catalog here (run an ingest first)")
        with self.connection():
            if not read_only:
                self.migrate(schema_dir)

    # -- lifecycle -----------------------------------------------------------------
    def close(self) -> None:
        """Nothing is held between operations; kept so that ``with Catalog(...)`` and explicit closes read as
        before."""

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One connection for the block: the file stays held (other processes wait) until it ends. Operations
        inside the block, in this thread, use it; a block inside another uses the outer one."""
        held = getattr(self._held, "con", None)
        if held is not None:
            yield held
            return
        con = _open_files.acquire(self.path, self.read_only, self.lock_wait_s, self.settings.duckdb_config())
        self._held.con = con
        try:
            yield con
        finally:
            self._held.con = None
            _open_files.release(self.path, con)

    @property
    def con(self) -> duckdb.DuckDBPyConnection | _Statements:
        """The connection of the current :meth:`connection` or :meth:`transaction` block; outside one, an object
        whose ``execute`` runs one statement on a connection of its own and returns its fetched result."""
        held = getattr(self._held, "con", None)
        return held if held is not None else _Statements(self)

    # -- schema --------------------------------------------------------------------
    def migrate(self, schema_dir: Path = SCHEMA_DIR) -> list[int]:
        """Apply the schema files not applied yet, each in its own transaction; returns their versions."""
        with self.connection():
            return self._migrate(schema_dir)

    def _migrate(self, schema_dir: Path) -> list[int]:
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
        return int(self.scalar("SELECT max(version) FROM schema_version") or 0)

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
        """BEGIN ... COMMIT, or ROLLBACK on any exception (including KeyboardInterrupt); the file is held for
        the block only."""
        with self.connection() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """Rows as dicts."""
        with self.connection() as con:
            cur = con.execute(sql, params or [])
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        with self.connection() as con:
            row = con.execute(sql, params or []).fetchone()
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
        with contextlib.nullcontext(con) if con is not None else self.connection() as target:
            json_cols = _json_columns(target, table)
            cols = list(rows[0].keys())
            data = {c: [_cell(r.get(c), c in json_cols) for r in rows] for c in cols}
            arrow = pa.table(data)
            name = f"_ins_{uuid.uuid4().hex}"
            target.register(name, arrow)
            try:
                target.execute(f"{verb} INTO {table} BY NAME SELECT * FROM {name}")
            finally:
                target.unregister(name)
        return len(rows)

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
        version = code_version()  # a git subprocess: not while the file is held
        with self.connection():
            self.mark_interrupted_runs(noticed_by=run_id)
            self.insert("runs", [{
                "run_id": run_id, "command": command, "parameters": dict(parameters or {}),
                "code_version": version, "started_at": dt.datetime.now(dt.UTC).replace(tzinfo=None),
                "ended_at": None, "status": "running", "detail": None, "host": socket.gethostname(),
                "pid": os.getpid(), "parent_run_id": parent_run_id,
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


class _Statements:
    """``Catalog.con`` outside a connection block: each ``execute`` opens the file, runs one statement, fetches
    its whole result and closes the file again (code written against a held connection keeps working)."""

    def __init__(self, cat: Catalog):
        self._cat = cat

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> _Result:
        with self._cat.connection() as con:
            cur = con.execute(sql) if params is None else con.execute(sql, params)
            return _Result(cur.description, cur.fetchall() if cur.description else [])


class _Result:
    """A fetched result with the cursor methods callers use (``description``, ``fetchone/fetchmany/fetchall``,
    ``fetchnumpy``)."""

    def __init__(self, description: list | None, rows: list[tuple]):
        self.description = description
        self._rows, self._next = rows, 0

    def fetchmany(self, size: int = 1) -> list[tuple]:
        out = self._rows[self._next:self._next + size]
        self._next += len(out)
        return out

    def fetchone(self) -> tuple | None:
        out = self.fetchmany(1)
        return out[0] if out else None

    def fetchall(self) -> list[tuple]:
        return self.fetchmany(len(self._rows))

    def fetchnumpy(self) -> dict[str, Any]:
        import numpy as np

        rows = self.fetchall()
        return {d[0]: np.array([r[i] for r in rows]) for i, d in enumerate(self.description or [])}


class _Locked(Exception):
    """The file is held by another process (or, in this process, by a connection of another configuration)."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


class _OpenFiles:
    """The catalog files this process has open right now: one DuckDB database per file, shared by the threads
    and :class:`Catalog` objects that use it at the same time (each gets a cursor; DuckDB refuses to open one
    file twice in a process with different settings), closed when its last user is done -- which releases
    the file to other processes. Not kept open for a next operation: a process writing in quick succession
    would then hold the file for good and starve the others."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, tuple[duckdb.DuckDBPyConnection, bool, int]] = {}  # path -> (database, read-only, users)

    def acquire(self, path: Path, read_only: bool, wait_s: float,
                config: dict[str, Any]) -> duckdb.DuckDBPyConnection:
        """A connection to ``path``, waiting (jittered exponential backoff) up to ``wait_s`` while another
        process holds the file."""
        if _in_ray_worker():
            raise CatalogError(f"{path}: a Ray worker does not open the catalog; return rows to the driver, "
                               "which writes them")
        key = os.path.abspath(path)
        deadline, pause = time.monotonic() + wait_s, _BACKOFF_S[0]
        while True:
            with self._lock:
                entry = self._open.get(key)
                if entry is not None and (read_only or not entry[1]):
                    database, ro, users = entry
                    self._open[key] = (database, ro, users + 1)
                    return database.cursor()
                if entry is not None:  # a read-only database in use here; a writer waits for it to close
                    holder = f"a read-only connection of this process (PID {os.getpid()})"
                else:
                    try:
                        database = _connect(path, read_only, config)
                    except _Locked as e:
                        holder = e.holder
                    else:
                        self._open[key] = (database, read_only, 1)
                        return database.cursor()
            left = deadline - time.monotonic()
            if left <= 0:
                raise CatalogError(
                    f"{path}: cannot open the catalog: held by {holder} for longer than {wait_s:g} s (DuckDB lets one "
                    "process hold the file; a flow holds it only while it writes; MAVORS_CATALOG_LOCK_WAIT_S sets "
                    "the wait)")
            time.sleep(min(pause * random.uniform(0.5, 1.5), left))
            pause = min(2 * pause, _BACKOFF_S[1])

    def release(self, path: Path, con: duckdb.DuckDBPyConnection) -> None:
        con.close()
        key = os.path.abspath(path)
        with self._lock:
            database, ro, users = self._open[key]
            if users > 1:
                self._open[key] = (database, ro, users - 1)
            else:
                del self._open[key]
                database.close()


_open_files = _OpenFiles()


def _connect(path: Path, read_only: bool, config: dict[str, Any]) -> duckdb.DuckDBPyConnection:
    """``duckdb.connect``; a held file raises :class:`_Locked` naming the holder, other failures
    :class:`CatalogError`."""
    try:
        return duckdb.connect(str(path), read_only=read_only, config=config)
    except duckdb.IOException as e:
        if not read_only and not os.access(path if path.exists() else path.parent, os.W_OK):
            raise CatalogError(_unwritable(path, str(e))) from e
        if "lock" not in str(e).lower():
            raise CatalogError(f"{path}: cannot open the catalog ({e})") from e
        raise _Locked(_holder(str(e))) from e
    except duckdb.ConnectionException as e:
        if "different configuration" not in str(e):
            raise CatalogError(f"{path}: cannot open the catalog ({e})") from e
        raise _Locked(f"a connection of this process (PID {os.getpid()}) opened outside core.catalog with "
                      f"read_only={not read_only}") from e


def _holder(message: str) -> str:
    """The process DuckDB names in a lock error, with its command line when it runs on this host."""
    m = re.search(r"\(PID (\d+)\)", message)
    if not m:
        return "another process"
    try:
        cmd = " ".join(Path(f"/proc/{m.group(1)}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split())
    except OSError:
        return f"process {m.group(1)}"
    return f"process {m.group(1)} ({cmd[:160]})" if cmd else f"process {m.group(1)}"


def _lock_wait_s() -> float:
    raw = os.environ.get("MAVORS_CATALOG_LOCK_WAIT_S")
    if raw is None:
        return LOCK_WAIT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise CatalogError(f"MAVORS_CATALOG_LOCK_WAIT_S={raw!r}: expected seconds >= 0")
    return value


def _in_ray_worker() -> bool:
    """Whether this process is a Ray worker (a task or actor), not a driver."""
    ray = sys.modules.get("ray")
    worker = getattr(getattr(getattr(ray, "_private", None), "worker", None), "global_worker", None)
    return worker is not None and getattr(worker, "mode", None) == getattr(ray, "WORKER_MODE", object())


def _json_columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? AND data_type = 'JSON'", [table],
    ).fetchall()
    return {r[0] for r in rows}


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
