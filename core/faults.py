"""Fault injection for the crash tests: SIGKILL this process at a named point, chosen by one variable.

    MAVORS_FAULT_AT=captions#2 mavors flow run end-to-end --no-ray     # 2nd catalog commit of the captions step
    MAVORS_FAULT_AT=ingest#1 mavors ingest manifests/sources/demo/*.yaml
    MAVORS_FAULT_AT=trainer-demo-stage1@3 python -m trainers.stage --spec ... --run-dir ...

A *point* is a named stretch of work: every recorded run (named by its command or flow,
:func:`core.runs.recorded_run`), every flow step (named by the step), a stage inside the train
flow's step (``train-<stage>``), and a trainer's loop (``trainer-<stage>``). ``MAVORS_FAULT_AT``
names one point and how it dies there:

- ``<point>``: when the point's work returns, before its end is recorded (a completed run, a
  completed Prefect task);
- ``<point>:<seconds>``: that long after the point started;
- ``<point>#<commits>``: once the catalog file changed that many times since the point started
  (units of work committed; watched from outside, so library code carries no hook);
- ``<point>@<step>``: right after that optimizer step of a training loop inside the point (the loop
  hangs the callbacks the point yields).

In every form, a point whose work returns before its trigger fired dies then; one that raises stops
its triggers and dies of nothing. The kill takes the process group when this process leads one, so
children (trainer subprocesses) die with it, as they would when a machine goes down.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FAULT_ENV = "MAVORS_FAULT_AT"
"""The variable naming the point to die at, and how (see the module docstring)."""

_SPEC = re.compile(r"^(?P<point>[^:#@]+?)(?:(?P<kind>[:#@])(?P<n>\d+(?:\.\d+)?))?$")
_POLL_S = 0.01
"""How often the commit watcher looks at the catalog file (a 10 ms window can merge two commits)."""


@dataclass(frozen=True)
class Fault:
    """A parsed ``MAVORS_FAULT_AT``: the point, and at most one trigger (None: the point's end)."""

    point: str
    seconds: float | None = None
    commits: int | None = None
    step: int | None = None


def parse_fault(text: str) -> Fault:
    """``<point>``, ``<point>:<seconds>``, ``<point>#<commits>`` or ``<point>@<step>`` as a :class:`Fault`."""
    m = _SPEC.match(text.strip())
    if m is None or (m["kind"] in ("#", "@") and "." in m["n"]):
        raise ValueError(f"{FAULT_ENV}={text!r}: expected <point>, <point>:<seconds>, <point>#<commits> "
                         "or <point>@<step>")
    kind, n = m["kind"], m["n"]
    if kind in ("#", "@") and int(n) < 1:
        raise ValueError(f"{FAULT_ENV}={text!r}: commits and steps count from 1")
    return Fault(m["point"], seconds=float(n) if kind == ":" else None,
                 commits=int(n) if kind == "#" else None, step=int(n) if kind == "@" else None)


def armed_fault(point: str) -> Fault | None:
    """The fault of ``MAVORS_FAULT_AT`` when it names ``point``, else None (also when the variable is unset)."""
    text = os.environ.get(FAULT_ENV, "")
    fault = parse_fault(text) if text else None
    return fault if fault is not None and fault.point == point else None


def kill_process(point: str, why: str) -> None:
    """Say why on stderr (log handlers and proxies may not flush before the kill), then SIGKILL this process and, when
    it leads one, its process group."""
    # straight to fd 2: a console's live display may hold sys.stderr in a proxy that writes on its refresh
    os.write(2, f"fault injection: SIGKILL during step {point} ({why})\n".encode())
    if os.getpgid(0) == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


class KillAtStep:
    """Training-loop callback (``on_start``/``on_step``/``on_end``, see ``trainers.loop``): SIGKILL right after
    optimizer step ``step``, its checkpoint (if due) already written by the callbacks before it."""

    def __init__(self, point: str, step: int):
        self.point, self.step = point, step

    def on_start(self, step: int) -> None:
        pass

    def on_step(self, step: int, stats: dict) -> None:
        if step == self.step:
            kill_process(self.point, f"after training step {step}")

    def on_end(self, step: int) -> None:
        pass


def _catalog_state(files: list[Path]) -> tuple:
    return tuple((f.stat().st_size, f.stat().st_mtime_ns) if f.exists() else None for f in files)


def _watch_commits(catalog: Path, n: int, point: str, stop: threading.Event) -> None:
    """Kill once the catalog file or its write-ahead log changed ``n`` times (each commit writes one of them)."""
    files = [catalog, catalog.with_name(catalog.name + ".wal")]
    last, seen = _catalog_state(files), 0
    while not stop.wait(_POLL_S):
        now = _catalog_state(files)
        if now != last:
            last, seen = now, seen + 1
            if seen >= n:
                kill_process(point, f"after {n} catalog commit(s)")


def _kill_later(seconds: float, point: str, stop: threading.Event) -> None:
    if not stop.wait(seconds):
        kill_process(point, f"{seconds:g} s after it started")


@contextlib.contextmanager
def fault_point(point: str, catalog: str | Path | None = None) -> Iterator[list[KillAtStep]]:
    """Mark the block as the point ``point``: honour ``MAVORS_FAULT_AT`` when it names it (see the module
    docstring). Yields the loop callbacks of a ``@<step>`` trigger (empty otherwise) for a training loop
    inside the block to hang on. ``catalog``: the file a ``#<commits>`` trigger watches."""
    fault = armed_fault(point)
    if fault is None:
        yield []
        return
    if fault.commits is not None and catalog is None:
        raise ValueError(f"{FAULT_ENV}={point}#{fault.commits}: the point {point!r} has no catalog to watch")
    stop = threading.Event()
    if fault.seconds is not None:
        threading.Thread(target=_kill_later, args=(fault.seconds, point, stop), daemon=True).start()
    if fault.commits is not None:
        threading.Thread(target=_watch_commits, args=(Path(catalog), fault.commits, point, stop),
                         daemon=True).start()
    try:
        yield [KillAtStep(point, fault.step)] if fault.step is not None else []
    except BaseException:
        stop.set()
        raise
    kill_process(point, "at its end")
