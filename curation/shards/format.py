"""The shard record: one sample of any shard (mixture stage or DPO pair set) as tar members.

    from curation.shards.format import sample_record
    record = sample_record("vid/q0", {"sample_id": "vid/q0", "conversation": turns}, [("/cache/ab.mp4", "mp4", {})])
    [name for name, _ in record.members()]      # ['vid_q0-<md5>.json', 'vid_q0-<md5>.0.mp4']

A record is ``KEY.json`` followed by one member per medium, ``KEY.<i>.<ext>``: ``i`` is the
medium's position in placeholder order (images and videos counted together, from 0), ``ext``
its file format. One rule for every kind of shard and any number of media: the member of the
i-th ``<image>``/``<video>`` placeholder is always ``<i>.<ext>``, never depending on how many
media a sample has. Stock ``webdataset`` splits a member name at its first dot, so it yields
``{"__key__": KEY, "json": ..., "0.jpg": ...}``, and its decoders pick a handler by the last
extension (``.decode("pil")`` turns ``0.jpg``/``0.png`` into images, leaves ``0.mp4`` as bytes).

The JSON (sorted keys, no spaces, UTF-8: :func:`canonical_json`) always has

* ``sample_id``: the catalog sample the record comes from;
* ``conversation``: LLaVA turns (``{"from": "human"|"gpt", "value": ...}``, placeholders in the text);
* ``media``: one entry per medium in placeholder order, ``file`` naming its member suffix
  (``0.mp4``) plus ``kind`` (image | video), ``media_hash`` and whatever the writer records.

Preference records (DPO pairs) add ``pair_id`` (the record's own id: a sample gives several
pairs), and ``chosen`` / ``rejected``, the two answer texts that follow ``conversation``.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFERENCE_SIDES = ("chosen", "rejected")
_KEY_OK = re.compile(r"[^A-Za-z0-9_-]")

Content = str | Path | bytes
"""A member's content: a file to copy, or the bytes themselves."""


@dataclass
class ShardRecord:
    """One sample of a shard: ``KEY.json`` from ``meta`` plus media members ``KEY.<suffix>``.

    ``files``: (suffix, content) in write order; build records with :func:`sample_record`.
    """

    key: str
    meta: dict[str, Any]
    files: list[tuple[str, Content]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,80}", self.key):
            raise ValueError(f"shard key {self.key!r}: use 1-80 characters of [A-Za-z0-9_-] (see sample_key)")

    def json_bytes(self) -> bytes:
        return canonical_json(self.meta)

    def members(self) -> list[tuple[str, Content]]:
        """(member name, content) in write order: the JSON first, then the media."""
        return [(f"{self.key}.json", self.json_bytes())] + [(f"{self.key}.{s}", c) for s, c in self.files]


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces, UTF-8)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sample_key(record_id: str) -> str:
    """A WebDataset key for a record id: readable, no dots or slashes, unique by an md5 suffix."""
    return f"{_KEY_OK.sub('_', record_id)[:60]}-{hashlib.md5(record_id.encode()).hexdigest()[:10]}"


def media_file(position: int, ext: str) -> str:
    """Member suffix of a sample's ``position``-th medium (placeholder order): ``0.jpg``, ``1.mp4``."""
    return f"{position}.{ext.lower().lstrip('.')}"


def sample_record(record_id: str, fields: Mapping[str, Any],
                  media: Sequence[tuple[Content, str, Mapping[str, Any]]]) -> ShardRecord:
    """The record of ``record_id``: ``fields`` plus a ``media`` list built from ``media``.

    ``media``: (content, ext, entry fields) per medium in placeholder order; each entry of the
    JSON's ``media`` gets ``file`` (its member suffix, :func:`media_file`) before its fields.
    """
    files = [(media_file(i, ext), content) for i, (content, ext, _) in enumerate(media)]
    entries = [{"file": suffix, **entry} for (suffix, _), (_, _, entry) in zip(files, media)]
    return ShardRecord(sample_key(record_id), {**fields, "media": entries}, files)


def media_bytes(meta: Mapping[str, Any], sample: Mapping[str, bytes]) -> list[bytes]:
    """A read sample's media in placeholder order (``sample``: member suffix -> bytes, as a reader yields it)."""
    return [sample[m["file"]] for m in meta.get("media", [])]


def answered(meta: Mapping[str, Any], side: str) -> list[dict[str, str]]:
    """A preference record's conversation followed by its ``chosen`` or ``rejected`` answer."""
    return [*meta["conversation"], {"from": "gpt", "value": meta[side]}]
