"""Progress of long library steps, reported to whatever renders it: the CLI draws rich bars, default nothing.

    from core import progress

    with progress.task("captions qwen2vl-tiny", total=len(items)) as bar:
        for batch in batches:
            ...
            bar.advance(len(batch))

The library never imports a console or Prefect: it reports here, and ``mavors`` installs a renderer
(``pipelines.console``) with :func:`rendered_by`. Tasks nest (a flow step around the bars of the library
call it makes); the renderer decides what a finished task leaves on screen. Updates may come from any thread.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol


class Renderer(Protocol):
    """What draws progress. ``depth`` is 0 for an outermost task, 1 for a task started inside it, ..."""

    def start(self, description: str, total: int | None, depth: int) -> Any: ...

    def update(self, handle: Any, completed: int, total: int | None) -> None: ...

    def stop(self, handle: Any, seconds: float, ok: bool) -> None: ...


_renderer: Renderer | None = None
_local = threading.local()  # depth of the tasks open in this thread


class Task:
    """One running task: ``advance`` or ``update`` it; both are no-ops when nothing renders."""

    def __init__(self, handle: Any, total: int | None) -> None:
        self._handle = handle
        self.total = total
        self.completed = 0
        self._lock = threading.Lock()

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.completed += n
            completed = self.completed
        if _renderer is not None and self._handle is not None:
            _renderer.update(self._handle, completed, self.total)

    def update(self, completed: int, total: int | None = None) -> None:
        """Set the count done (and the total, once it is known)."""
        self.completed = completed
        if total is not None:
            self.total = total
        if _renderer is not None and self._handle is not None:
            _renderer.update(self._handle, completed, self.total)


@contextlib.contextmanager
def task(description: str, total: int | None = None) -> Iterator[Task]:
    """Report a step of ``total`` units (None: unknown yet, or a step without units) while the block runs."""
    renderer = _renderer
    depth = getattr(_local, "depth", 0)
    handle = renderer.start(description, total, depth) if renderer is not None else None
    started, ok = time.monotonic(), False
    _local.depth = depth + 1
    try:
        yield Task(handle, total)
        ok = True
    finally:
        _local.depth = depth
        if renderer is not None:
            renderer.stop(handle, time.monotonic() - started, ok)


@contextlib.contextmanager
def rendered_by(renderer: Renderer) -> Iterator[None]:
    """Send every task started inside the block to ``renderer``."""
    global _renderer
    previous, _renderer = _renderer, renderer
    try:
        yield
    finally:
        _renderer = previous
