"""``mavors shards verify``: every shard an index lists, checked against the index, the catalog and its record format.

    mavors shards verify mavors-work/shards/demo-stage2         # checksums, counts, members, decodability
    python -c "from curation.shards.verify import verify_shards; print(verify_shards('mavors-work/shards'))"
"""
from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.shards.format import media_file
from curation.shards.read import index_files, iter_samples
from curation.shards.writer import INDEX_NAME
from curation.media import file_sha256
from curation.transcode import decode_check
from model.preprocessing import MediaError


@dataclass
class VerifyReport:
    """Result of :func:`verify_shards`: problems name the shard (and sample) they concern."""

    n_shards: int = 0
    n_samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_shards(root: str | Path, *, recorded: Mapping[str, str] | None = None,
                  decode: bool = True) -> VerifyReport:
    """Check every shard listed by the index files under ``root``.

    Per shard: the file exists, its sha256 and size match the index (and ``recorded``,
    name -> sha256 from the catalog, when given), it reads as a tar, its sample count
    matches, every sample has its JSON and each media file the JSON lists, with the
    listed sha256, named by the record rule (:mod:`curation.shards.format`) and no member
    besides them, and (``decode``) every media decodes. Record keys must be unique across
    the shards of one index (one stage or pair domain).
    """
    report = VerifyReport()
    indexes = index_files(root)
    if not indexes:
        report.problems.append(f"{root}: no {INDEX_NAME} found")
    for index_path in indexes:
        seen: dict[str, str] = {}
        index = json.loads(index_path.read_text())
        for entry in index["shards"]:
            report.n_shards += 1
            path = index_path.parent / entry["name"]
            report.problems.extend(_verify_one(path, entry, recorded, decode, seen, report))
    return report


def _verify_one(path: Path, entry: Mapping[str, Any], recorded: Mapping[str, str] | None, decode: bool,
                seen: dict[str, str], report: VerifyReport) -> list[str]:
    name = path.name
    if not path.exists():
        return [f"shard {name}: missing ({path})"]
    problems = []
    sha = file_sha256(path)
    if sha != entry["sha256"]:
        problems.append(f"shard {name}: sha256 {sha[:16]}... does not match the index ({entry['sha256'][:16]}...)")
    if recorded is not None and recorded.get(name) != sha:
        problems.append(f"shard {name}: sha256 does not match the catalog's shards row "
                        f"({(recorded.get(name) or 'no row')[:16]})")
    if path.stat().st_size != entry["bytes"]:
        problems.append(f"shard {name}: {path.stat().st_size} bytes, index says {entry['bytes']}")
    n = 0
    try:
        for sample in iter_samples([path]):
            n += 1
            key = sample["__key__"]
            if "json" not in sample:
                problems.append(f"shard {name}: sample {key} has no .json")
                continue
            meta = json.loads(sample["json"])
            sid = meta.get("pair_id") or meta.get("sample_id", key)
            if key in seen:
                problems.append(f"shard {name}: sample {sid} also in shard {seen[key]}")
            seen[key] = name
            media = meta.get("media", [])
            unlisted = sorted(set(sample) - {"__key__", "__url__", "json"} - {m["file"] for m in media})
            if unlisted:
                problems.append(f"shard {name}: sample {sid} has members its JSON does not list: {unlisted}")
            for i, m in enumerate(media):
                data = sample.get(m["file"])
                if not m["file"].startswith(f"{i}."):
                    problems.append(f"shard {name}: sample {sid} medium {i} is named .{m['file']} "
                                    f"(expected .{media_file(i, m['file'].rpartition('.')[2])})")
                if data is None:
                    problems.append(f"shard {name}: sample {sid} lacks its .{m['file']}")
                elif hashlib.sha256(data).hexdigest() != m.get("sha256", hashlib.sha256(data).hexdigest()):
                    problems.append(f"shard {name}: sample {sid} .{m['file']} does not match its sha256")
                elif decode:
                    try:
                        decode_check(data, m["kind"])
                    except MediaError as e:
                        problems.append(f"shard {name}: sample {sid} .{m['file']} does not decode ({e})")
    except (tarfile.TarError, OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        problems.append(f"shard {name}: unreadable after {n} samples ({type(e).__name__}: {e})")
    if n != entry["n_samples"]:
        problems.append(f"shard {name}: {n} samples, index says {entry['n_samples']}")
    report.n_samples += n
    return problems

