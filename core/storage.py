"""Faults of our own outputs (disk full, read-only, permissions, I/O errors): run failures, never sample verdicts.

    with storage_errors(tmp):               # any OSError in the block -> StorageError naming tmp
        out.write(data)

A step that turns a sample's failure into a quarantine row must not do so when the failure was
writing (or reading back) its own output: the sample is fine and the disk is not. Wrapping only
the output-side calls in :func:`storage_errors` makes the difference visible: the
:class:`StorageError` it raises is not an ``OSError``, so a ``except OSError`` that refuses bad
media does not catch it, and the run stops with one line, ``cannot write PATH: No space left on
device``. A rerun after the fault is fixed redoes the unfinished work.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


class StorageError(RuntimeError):
    """An output of this run could not be written or read back; ``errno`` as the OS gave it (None if unknown).

    Picklable (Ray carries it from a worker to the driver): the constructor takes its own ``args``.
    """

    def __init__(self, path: str, reason: str, errno: int | None = None, action: str = "write"):
        super().__init__(path, reason, errno, action)
        self.path, self.reason, self.errno, self.action = path, reason, errno, action

    def __str__(self) -> str:
        return f"cannot {self.action} {self.path}: {self.reason}"


@contextlib.contextmanager
def storage_errors(path: str | Path, action: str = "write") -> Iterator[None]:
    """Turn an ``OSError`` raised in the block into a :class:`StorageError` naming ``path`` (the file or
    folder the block writes; ``action`` "read" for reading back our own files)."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or (os.strerror(e.errno) if e.errno else str(e) or type(e).__name__)
        raise StorageError(str(path), reason, e.errno, action) from e
