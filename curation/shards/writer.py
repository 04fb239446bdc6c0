"""Writing shards: byte-exact ustar tars, durable (fsync, atomic rename), checksummed, plus ``index.json``.

    from curation.shards.writer import write_records
    infos = write_records(records, "out/pairs", prefix="pairs", max_samples=1000, max_bytes=512 << 20)

Every member header is fixed (mtime 0, uid/gid 0, mode 0444, no user names) and records go
in the given order, so a shard is a function of its records: the same records give
byte-identical shards. Writing a shard: to ``.NAME.partial``, fsync, rename to ``NAME``,
fsync the folder. Sizes are exact (tar headers and padding counted), so records can be
packed into shards bounded by count and bytes before anything is written. Each shard folder
gets an ``index.json`` listing its shards, their sha256, sample counts and sizes. This module
touches only the file system (it runs in Ray workers); the catalog rows are the caller's.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import tarfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.storage import storage_errors
from curation.shards.format import Content, ShardRecord
from curation.media import file_sha256

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 10240: tarfile pads the archive to a multiple of this
INDEX_NAME = "index.json"


# -- exact tar sizes ---------------------------------------------------------------------------------
def member_tar_bytes(size: int) -> int:
    """One header block plus the data padded to whole blocks (names are <= 100 ASCII chars: no extra headers)."""
    return BLOCK + -(-size // BLOCK) * BLOCK


def tar_bytes(record_bytes: int) -> int:
    """Size of a tar whose members take ``record_bytes``: two zero end blocks, padded to a whole record."""
    return -(-(record_bytes + 2 * BLOCK) // RECORD) * RECORD


def record_tar_bytes(record: ShardRecord) -> int:
    """Bytes a record takes in a tar (headers and padding included)."""
    return sum(member_tar_bytes(len(c) if isinstance(c, bytes) else os.path.getsize(c)) for _, c in record.members())


class Packer:
    """Next-fit packing of records, one tar size at a time in order, into consecutive shards within both bounds
    (a stream of any length: nothing but the open shard's count and bytes is kept).

    A record alone over ``max_bytes`` gets a shard of its own (it cannot be split).
    """

    def __init__(self, max_samples: int, max_bytes: int):
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.n, self.used = 0, 0  # the open shard's records and their tar bytes

    def add(self, size: int) -> bool:
        """Count the next record in; True when it opens a new shard (the open one is full, or over
        ``max_bytes`` with it)."""
        opens = bool(self.n) and (self.n >= self.max_samples or tar_bytes(self.used + size) > self.max_bytes)
        if opens:
            self.n, self.used = 0, 0
        self.n += 1
        self.used += size
        return opens


def pack(sizes: Sequence[int], max_samples: int, max_bytes: int) -> list[range]:
    """Split records (tar sizes, in order) into consecutive shards within both bounds (:class:`Packer`)."""
    packer = Packer(max_samples, max_bytes)
    starts = [i for i, size in enumerate(sizes) if packer.add(size) or i == 0]
    return [range(a, b) for a, b in zip(starts, starts[1:] + [len(sizes)])]


# -- writing one shard ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardInfo:
    """A completed shard, as recorded in the ``shards`` table and the index."""

    name: str
    path: str
    sha256: str
    n_samples: int
    bytes: int
    plan_sha256: str | None = None
    """:func:`plan_sha256` of the records it was written from (a rerun keeps the shard only for the same plan)."""


class _DurableFile:
    """Write-only file for one shard: buffers go straight to the descriptor while a helper thread hashes
    them (sha256) and a second one flushes written data to disk every ``sync_every`` bytes, so hashing
    and the final fsync overlap the writing instead of following it."""

    def __init__(self, path: Path, sync_every: int | None = 32 << 20):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.sha, self.n, self.sync_every, self._unsynced = hashlib.sha256(), 0, sync_every, 0
        self._hash_q: queue.Queue = queue.Queue(maxsize=256)
        self._sync_q: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=self._hash_loop, daemon=True),
                         threading.Thread(target=self._sync_loop, daemon=True)]
        for t in self._threads:
            t.start()

    def _hash_loop(self) -> None:
        while (buf := self._hash_q.get()) is not None:
            self.sha.update(buf)  # releases the GIL for large buffers

    def _sync_loop(self) -> None:
        while self._sync_q.get() is not None:
            os.fdatasync(self.fd)

    def write(self, buf: bytes | memoryview) -> None:
        view = memoryview(buf)
        while view:
            view = view[os.write(self.fd, view):]
        self._hash_q.put(buf)
        self.n += len(buf)
        self._unsynced += len(buf)
        if self.sync_every is not None and self._unsynced >= self.sync_every:
            self._sync_q.put(True)
            self._unsynced = 0

    def _stop_helpers(self) -> None:
        self._hash_q.put(None)
        self._sync_q.put(None)
        for t in self._threads:
            t.join()

    def close(self) -> str:
        """Finish hashing, fsync (unless syncing is off), close; returns the sha256 hex digest."""
        self._stop_helpers()
        if self.sync_every is not None:
            os.fsync(self.fd)
        os.close(self.fd)
        return self.sha.hexdigest()

    def abort(self) -> None:
        self._stop_helpers()
        os.close(self.fd)


def _fixed_header(name: str, size: int) -> bytes:
    """The ustar header tarfile itself would write, with owner, mode and time fixed."""
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0o444, 0, 0, "", ""
    return ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def _write_member(out: _DurableFile, name: str, content: Content, chunk: int = 4 << 20) -> None:
    if isinstance(content, bytes):
        out.write(_fixed_header(name, len(content)))
        out.write(content)
        size = len(content)
    else:
        with storage_errors(content, "read"):  # only the reads: the writes' errors name the shard
            f = open(content, "rb")  # noqa: SIM115 - closed by the with below
            size = os.fstat(f.fileno()).st_size
        with f:
            out.write(_fixed_header(name, size))
            while True:
                with storage_errors(content, "read"):
                    block = f.read(chunk)
                if not block:
                    break
                out.write(block)
    if size % BLOCK:
        out.write(bytes(BLOCK - size % BLOCK))


def write_shard(path: str | Path, records: Sequence[ShardRecord], *, durable: bool = True) -> ShardInfo:
    """Write one shard atomically (temp name, fsync, rename, fsync folder); returns its info.

    The bytes are exactly what ``tarfile`` (ustar) writes for these members and headers:
    header + data padded to 512-byte blocks per member, two zero blocks, padding to a
    10240-byte record. Runs in Ray workers: it touches only the file system, never the catalog.
    ``durable=False`` skips the fsyncs (scratch output, or measuring the disk's share of the cost).
    A file system error raises :class:`core.storage.StorageError` naming the file (no partial file is left).
    """
    path = Path(path)
    tmp = partial_path(path)
    with storage_errors(tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        out = _DurableFile(tmp, sync_every=32 << 20 if durable else None)
        try:
            for record in records:
                for name, content in record.members():
                    _write_member(out, name, content)
            out.write(bytes(tar_bytes(out.n) - out.n))  # end-of-archive blocks and record padding
        except BaseException:
            out.abort()
            with contextlib.suppress(OSError):  # free the space a full disk needs back
                tmp.unlink()
            raise
        sha = out.close()
    with storage_errors(path):
        tmp.replace(path)
        if durable:
            fsync_dir(path.parent)
    return ShardInfo(path.name, str(path), sha, len(records), out.n, plan_sha256(records))


def plan_sha256(records: Sequence[ShardRecord]) -> str:
    """Hash of what a shard is written from: its member names and JSON in order (a file's content enters
    through the JSON: mixture records carry each medium's sha256). Equal plans give equal shard bytes."""
    h = hashlib.sha256()
    for record in records:
        for name, content in record.members():
            h.update(name.encode() + b"\0")
            if isinstance(content, bytes):
                h.update(len(content).to_bytes(8, "little") + content)
    return h.hexdigest()


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def write_index(out_dir: Path, shards: Sequence[ShardInfo], **header: Any) -> Path:
    """``index.json`` of a shard folder (deterministic bytes, written atomically)."""
    index = {**header, "n_shards": len(shards), "n_samples": sum(s.n_samples for s in shards),
             "bytes": sum(s.bytes for s in shards),
             "shards": [{"name": s.name, "sha256": s.sha256, "n_samples": s.n_samples, "bytes": s.bytes}
                        for s in shards]}
    path = out_dir / INDEX_NAME
    tmp = partial_path(path)
    with storage_errors(path):
        tmp.write_bytes(json.dumps(index, indent=1, sort_keys=True).encode() + b"\n")
        tmp.replace(path)
    return path


def clean_partials(out_dir: Path) -> list[Path]:
    """Delete leftovers of interrupted writes (``.*.partial``); returns what was removed."""
    removed = sorted(out_dir.glob(".*.partial")) if out_dir.exists() else []
    for p in removed:
        with storage_errors(p):
            p.unlink()
    return removed


def is_complete(path: Path, sha256: str | None) -> bool:
    """A shard counts as done only if a recorded checksum exists and the file still matches it."""
    with storage_errors(path, "read"):
        return sha256 is not None and path.exists() and file_sha256(path) == sha256


def write_records(records: Iterable[ShardRecord], out_dir: str | Path, *, prefix: str, max_samples: int,
                  max_bytes: int, index_header: Mapping[str, Any] | None = None) -> list[ShardInfo]:
    """Pack records (e.g. DPO pairs) in order into shards ``PREFIX-NNNNNN.tar`` plus ``index.json``.

    Record keys must be unique. The caller records the returned infos
    (:func:`curation.shards.build.record_shard`) and decides what counts as finished.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_partials(out_dir)
    records = list(records)
    keys = [r.key for r in records]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"record key {dup!r} appears more than once")
    infos = [write_shard(out_dir / shard_name(prefix, i), [records[j] for j in group])
             for i, group in enumerate(pack([record_tar_bytes(r) for r in records], max_samples, max_bytes))]
    write_index(out_dir, infos, **dict(index_header or {}))
    return infos


def existing_info(path: Path, records: Sequence[ShardRecord], sha256: str, plan: str) -> ShardInfo:
    """The info of a finished shard a rerun keeps, written from ``records``: ``sha256`` and ``plan``
    (:func:`plan_sha256`) as already checked against its row (:func:`is_complete`), so it is not hashed twice."""
    with storage_errors(path, "read"):
        return ShardInfo(path.name, str(path), sha256, len(records), path.stat().st_size, plan)
