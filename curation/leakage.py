"""Prove that no held-out sample reaches training: scan the shards themselves, not the catalog's plan.

    mavors eval check-leakage mavors-work/shards

Every ``.json`` record is checked for a held-out sample id and held-out media hashes
(``media[].media_hash`` of mixture shards, ``media_hashes`` of preference records), and
every media member's bytes are hashed and checked against the held-out media hashes, so
a copy that slipped in under another id or without metadata is caught too.
"""
from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from core.catalog import Catalog


class LeakageError(AssertionError):
    """Held-out material was found in a training shard."""


@dataclass(frozen=True)
class Leak:
    shard: str
    member: str
    what: str      # sample_id | media_hash | media_bytes
    value: str


def _record_media_hashes(meta: dict) -> list[str]:
    hashes = [m.get("media_hash") for m in meta.get("media", []) if isinstance(m, dict)]
    return [h for h in hashes + list(meta.get("media_hashes", []) or []) if h]


def find_leaks(cat: Catalog, shards: Iterable[str | Path]) -> list[Leak]:
    """All held-out ids and media found in ``shards`` (tar files, or folders searched for ``*.tar``)."""
    held_ids = {r[0] for r in cat.con.execute("SELECT sample_id FROM heldout").fetchall()}
    held_media = {r[0] for r in cat.con.execute("SELECT media_hash FROM heldout").fetchall()}
    leaks: list[Leak] = []
    for shard in _tar_files(shards):
        try:
            leaks += _shard_leaks(shard, held_ids, held_media)
        except (tarfile.TarError, EOFError) as e:
            # tarfile's own text names neither the file nor, for a non-tar, one reason (it lists every codec tried)
            reason = "truncated (unexpected end of data)" if "end of data" in str(e) or isinstance(e, EOFError) \
                else "not a tar file"
            raise LeakageError(f"{shard}: cannot read the shard: {reason}") from e
    return leaks


def _shard_leaks(shard: Path, held_ids: set[str], held_media: set[str]) -> list[Leak]:
    leaks = []
    with tarfile.open(shard) as tar:
        for member in tar:
            if not member.isfile():
                continue
            data = tar.extractfile(member).read()
            if member.name.endswith(".json"):
                meta = json.loads(data)
                if meta.get("sample_id") in held_ids:
                    leaks.append(Leak(str(shard), member.name, "sample_id", meta["sample_id"]))
                leaks += [Leak(str(shard), member.name, "media_hash", h)
                          for h in _record_media_hashes(meta) if h in held_media]
            else:
                digest = hashlib.sha256(data).hexdigest()
                if digest in held_media:
                    leaks.append(Leak(str(shard), member.name, "media_bytes", digest))
    return leaks


def check_no_leakage(cat: Catalog, shards: Iterable[str | Path]) -> int:
    """Raise :class:`LeakageError` naming every leak; returns the number of shards checked."""
    files = _tar_files(shards)
    leaks = find_leaks(cat, files)
    if leaks:
        lines = [f"{leak.shard}: {leak.member}: held-out {leak.what} {leak.value}" for leak in leaks[:20]]
        more = f"\n... and {len(leaks) - 20} more" if len(leaks) > 20 else ""
        raise LeakageError(f"{len(leaks)} held-out item(s) in training shards:\n" + "\n".join(lines) + more)
    return len(files)


def _tar_files(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        out += sorted(p.rglob("*.tar")) if p.is_dir() else [p]
    return out
