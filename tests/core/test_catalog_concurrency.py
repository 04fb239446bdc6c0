"""Catalog: several processes on one file. Each operation holds the file only while it runs; a process that finds
it held waits (jittered backoff) up to the lock wait, then fails with one line naming the file and the holder.

    pytest tests/core/test_catalog_concurrency.py -q
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time

import pytest

from core.catalog import Catalog, CatalogError
from core.processes import project_env

HOLDER = """
import sys, time
from core.catalog import Catalog
cat = Catalog(sys.argv[1])
with cat.transaction() as con:
    con.execute("INSERT INTO quarantine (source, item, reason) SELECT 'w', 'i' || range, 'r' FROM range(50)")
    print('holding', flush=True)
    time.sleep(float(sys.argv[2]))  # a long write: the second half is not visible until the commit
    con.execute("INSERT INTO quarantine (source, item, reason) SELECT 'w', 'j' || range, 'r' FROM range(50)")
print('released', flush=True)
"""

WRITER = """
import os, random, sys, time
from core.catalog import Catalog
path, tag, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
cat = Catalog(path)
print('ready', flush=True)
while not os.path.exists(go):
    time.sleep(0.01)
rng = random.Random(tag)
for i in range(n):
    with cat.transaction() as con:  # read the count and write it back: lost updates would repeat a number
        seen = con.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        cat.insert("quarantine", [{"source": tag, "item": str(i), "reason": "r", "detail": str(seen)}], con=con)
    time.sleep(rng.uniform(0.0, 0.05))  # the work between two writes
"""


def _start(code: str, *args: object, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=project_env(env))


def _wait_line(proc: subprocess.Popen, line: str) -> None:
    got = proc.stdout.readline().strip()
    assert got == line, f"child said {got!r}; stderr: {proc.stderr.read()[-2000:]}"


@contextlib.contextmanager
def _holding(path, seconds: float):
    """A child process holding the catalog in a write transaction for ``seconds`` once it says "holding"."""
    holder = _start(HOLDER, path, seconds)
    try:
        _wait_line(holder, "holding")
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_a_reader_in_another_process_waits_for_a_write_and_sees_it_whole(tmp_path):
    path = tmp_path / "catalog.duckdb"
    Catalog(path)
    with _holding(path, 1.5) as holder:
        t0 = time.monotonic()
        with Catalog(path, read_only=True) as cat:  # opens once the writer's transaction is done
            n = cat.scalar("SELECT count(*) FROM quarantine")
        waited = time.monotonic() - t0
        _wait_line(holder, "released")
    assert n == 100  # both halves, never the 50 of the open transaction
    assert waited > 0.5  # it did wait for the writer (which held the file 1.5 s after saying so)


def test_two_writers_interleave_their_transactions_and_lose_nothing(tmp_path):
    path = tmp_path / "catalog.duckdb"
    Catalog(path)
    go, n = tmp_path / "go", 15
    writers = [_start(WRITER, path, tag, n, go) for tag in ("a", "b")]
    try:
        for w in writers:
            _wait_line(w, "ready")
        go.touch()
        for w in writers:
            assert w.wait(timeout=240) == 0, w.stderr.read()[-2000:]
    finally:
        for w in writers:
            w.kill()
            w.wait()
    with Catalog(path, read_only=True) as cat:
        rows = cat.query("SELECT source, item, CAST(detail AS INTEGER) AS seen FROM quarantine ORDER BY seen")
    assert sorted((r["source"], int(r["item"])) for r in rows) == [(t, i) for t in "ab" for i in range(n)]
    assert [r["seen"] for r in rows] == list(range(2 * n))  # each transaction saw every commit before it
    order = [r["source"] for r in rows]
    switches = sum(x != y for x, y in zip(order, order[1:]))
    assert switches >= 2, f"the writers ran one after the other, not interleaved: {''.join(order)}"


def test_a_held_file_fails_after_the_lock_wait_with_one_line_naming_file_and_holder(tmp_path):
    path = tmp_path / "catalog.duckdb"
    Catalog(path)
    with _holding(path, 60) as holder:
        t0 = time.monotonic()
        with pytest.raises(CatalogError) as e:
            Catalog(path, lock_wait_s=1.0).scalar("SELECT 1")
        waited = time.monotonic() - t0
        # the wait from the environment, in a process of its own
        opener = _start("import sys; from core.catalog import Catalog, CatalogError\n"
                        "try: Catalog(sys.argv[1], read_only=True)\nexcept CatalogError as e: print(e); sys.exit(3)",
                        path, env={"MAVORS_CATALOG_LOCK_WAIT_S": "0.5"})
        out, err = opener.communicate(timeout=60)
    msg = str(e.value)
    assert 1.0 <= waited < 10
    assert "\n" not in msg and msg.startswith(f"{path}: cannot open the catalog: held by process {holder.pid} (")
    assert "for longer than 1 s" in msg and "MAVORS_CATALOG_LOCK_WAIT_S" in msg
    assert opener.returncode == 3, err[-2000:]
    assert f"held by process {holder.pid} (" in out and "for longer than 0.5 s" in out


def test_a_bad_lock_wait_setting_is_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MAVORS_CATALOG_LOCK_WAIT_S", "soon")
    with pytest.raises(CatalogError, match=r"^MAVORS_CATALOG_LOCK_WAIT_S='soon': expected seconds >= 0$"):
        Catalog(tmp_path / "catalog.duckdb")


def test_nothing_is_held_between_operations(tmp_path):
    """Another process opens the file while this one has a Catalog open (between its operations), and the held block of :meth:`Catalog.connection` keeps it out until the block ends."""
    path = tmp_path / "catalog.duckdb"
    probe = ("import sys; from core.catalog import Catalog, CatalogError\n"
             "try: print(Catalog(sys.argv[1], read_only=True, lock_wait_s=float(sys.argv[2]))"
             ".scalar('SELECT count(*) FROM runs'))\n"
             "except CatalogError as e: print('held'); sys.exit(3)")
    with Catalog(path) as cat:
        cat.start_run("test")
        free = _start(probe, path, 0).communicate(timeout=60)[0].strip()
        with cat.connection():
            held = _start(probe, path, 0).communicate(timeout=60)[0].strip()
        waited = _start(probe, path, 30).communicate(timeout=60)[0].strip()  # right after the block: waits
    assert (free, held, waited) == ("1", "held", "1")


def test_in_one_process_catalogs_and_threads_share_the_open_file(tmp_path):
    """Two Catalog objects (one read-only) and several threads use one open database; a writer waits for a
    read-only one of this process to close."""
    path = tmp_path / "catalog.duckdb"
    writer = Catalog(path)
    reader = Catalog(path, read_only=True)
    with writer.transaction() as con:  # a read-only reader inside a write: it shares the open database
        writer.insert("quarantine", [{"source": "s", "item": "1", "reason": "r"}], con=con)
        assert reader.scalar("SELECT count(*) FROM quarantine") == 0  # its own connection: not before the commit
    assert reader.scalar("SELECT count(*) FROM quarantine") == 1
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            for j in range(5):
                writer.insert("quarantine", [{"source": f"t{i}", "item": str(j), "reason": "r"}])
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and reader.scalar("SELECT count(*) FROM quarantine") == 21
    with reader.connection():
        with pytest.raises(CatalogError, match=rf"held by a read-only connection of this process \(PID {os.getpid()}\)"):
            Catalog(path, lock_wait_s=0.2).scalar("SELECT 1")


def _open_in_worker(path: str) -> str:
    try:
        Catalog(path, read_only=True)
    except CatalogError as e:
        return str(e)
    return "opened"


@pytest.mark.usefixtures("ray_by_value")
def test_a_ray_worker_is_refused_the_catalog(tmp_path, ray_local):
    path = tmp_path / "catalog.duckdb"
    Catalog(path)
    got = ray_local.get(ray_local.remote(_open_in_worker).remote(str(path)))
    assert got == f"{path}: a Ray worker does not open the catalog; return rows to the driver, which writes them"
