"""One ``runs`` row per command or flow run: started as ``running``, ended ``completed``, ``failed`` (with the
error's message) or ``interrupted`` (Ctrl-C), whatever the body does.

Every entry point (each ``mavors`` command, each flow) records its run here and nowhere else; library
functions take a ``run_id`` and never record a run of their own, so one command is one row.

    with recorded_run(settings.catalog, "dedup run", {"policy": str(path)}) as run:
        report = run_policy(cat, policy, run_id=run.run_id)
        run.detail = json.dumps(report)          # optional: stored with the completed row

Given a catalog *path*, the file is opened only to start and to end the run, so trainer ranks and
child processes launched inside the block never meet a held lock; given an open :class:`Catalog`,
that connection is used.

A run started inside another's block (an end-to-end flow's curate, train and DPO parts) records that run as
its ``parent_run_id``, so the outer run's report takes in the rows its parts wrote.

The block is also the fault-injection point named ``command`` (:mod:`core.faults`), so a crash test can
kill any command, e.g. ``MAVORS_FAULT_AT=ingest#1 mavors ingest ...`` after its first committed source.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.catalog import Catalog
from core.faults import fault_point

DETAIL_CHARS = 2000
"""Longest stored failure message (a traceback-sized message would bloat the table)."""

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("mavors_run", default=None)
"""The run whose block the code is in (the parent of a run started now)."""


@dataclass
class Run:
    """The run being recorded: its id, and the detail stored when it completes."""

    run_id: str
    detail: str | None = None


@contextlib.contextmanager
def _open(catalog: Catalog | str | Path) -> Iterator[Catalog]:
    if isinstance(catalog, Catalog):
        yield catalog
    else:
        with Catalog(catalog) as cat:
            yield cat


@contextlib.contextmanager
def recorded_run(catalog: Catalog | str | Path, command: str, parameters: Mapping[str, Any] | None = None,
                 *, run_id: str | None = None) -> Iterator[Run]:
    """Record ``command`` as a run for the duration of the block (see the module docstring)."""
    with _open(catalog) as cat:
        run = Run(cat.start_run(command, parameters, run_id=run_id, parent_run_id=_current.get()))
        path = cat.path
    token = _current.set(run.run_id)
    try:
        with fault_point(command, path):  # armed after the start is committed: commits count the body's
            yield run
    except KeyboardInterrupt:
        with _open(catalog) as cat:
            cat.finish_run(run.run_id, "interrupted", "KeyboardInterrupt")
        raise
    except BaseException as e:
        with _open(catalog) as cat:
            cat.finish_run(run.run_id, "failed", f"{type(e).__name__}: {e}"[:DETAIL_CHARS])
        raise
    finally:
        _current.reset(token)
    with _open(catalog) as cat:
        cat.finish_run(run.run_id, "completed", run.detail)
