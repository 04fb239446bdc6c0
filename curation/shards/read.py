"""Reading shards back: the shards a folder's ``index.json`` files list, and the samples in them.

    from curation.shards.read import iter_samples, list_shards
    for sample in iter_samples(s.url for s in list_shards("mavors-work/shards/demo-stage2/s2")):
        meta = json.loads(sample["json"])       # sample: {"__key__", "__url__", "json", "0.mp4", ...}

A sample comes out as stock ``webdataset`` yields it (``tarfile_to_samples``): a dict with
``__key__`` (the member name up to its first dot), ``__url__`` (the shard) and one entry per
member suffix holding the raw bytes, so code that decodes samples works on either reader.
Nothing is parsed here: a consumer that skips samples (a resumed epoch) pays no decoding.
DPO pair scoring, ``mavors shards verify`` and the preference ``datasets`` loader read through
:func:`iter_samples`; the trainer's loader reads single samples by position (:class:`ShardReader`, from
an offset table of the tar's headers), so a rank reads only its own samples.
"""
from __future__ import annotations

import json
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from curation.shards.writer import INDEX_NAME


@dataclass(frozen=True)
class ShardEntry:
    """A shard as its ``index.json`` lists it."""

    url: str
    n_samples: int


def index_files(root: str | Path) -> list[Path]:
    """``index.json`` of ``root`` itself, else of every shard folder below it (not the transcode cache).
    A missing ``root`` is an error of its own: a typo, not a folder that holds no shards."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: {'not a folder' if root.exists() else 'the folder does not exist'}")
    if (root / INDEX_NAME).exists():
        return [root / INDEX_NAME]
    return sorted(p for p in root.rglob(INDEX_NAME) if ".media" not in p.parts)


def list_shards(root: str | Path) -> list[ShardEntry]:
    """Shards (path, sample count) listed by the ``index.json`` files under ``root``, in index order."""
    entries = [ShardEntry(str(index.parent / e["name"]), int(e["n_samples"]))
               for index in index_files(root) for e in json.loads(index.read_text())["shards"]]
    if not entries:
        raise FileNotFoundError(f"{root}: no shards (no index.json listing any); run `mavors shards build` first")
    return entries


def iter_samples(shards: Iterable[str | Path]) -> Iterator[dict[str, bytes | str]]:
    """Every sample of ``shards`` in order: consecutive members sharing a key make one sample."""
    for shard in shards:
        sample: dict[str, bytes | str] = {}
        with tarfile.open(shard, "r|") as tar:  # streaming: members in file order, read once
            for member in tar:
                if not member.isfile():
                    continue
                key, _, suffix = member.name.partition(".")
                if sample and sample["__key__"] != key:
                    yield sample
                    sample = {}
                if not sample:
                    sample = {"__key__": key, "__url__": str(shard)}
                sample[suffix.lower()] = tar.extractfile(member).read()
        if sample:
            yield sample


class ShardReader:
    """Random access to the samples of shards by (shard path, sample number), shaped as :func:`iter_samples`
    yields them. A shard's members are located once, from its tar headers (data is seeked over, not read);
    the table (member name, offset, size per sample) stays in memory, about a hundred bytes per member."""

    def __init__(self):
        self.tables: dict[str, list[list[tuple[str, int, int]]]] = {}

    def table(self, shard: str) -> list[list[tuple[str, int, int]]]:
        if shard not in self.tables:
            samples: list[list[tuple[str, int, int]]] = []
            key = None
            with tarfile.open(shard, "r:") as tar:  # seekable: headers only
                for member in tar:
                    if not member.isfile():
                        continue
                    k = member.name.partition(".")[0]
                    if k != key:
                        samples.append([])
                        key = k
                    samples[-1].append((member.name, member.offset_data, member.size))
            self.tables[shard] = samples
        return self.tables[shard]

    def read(self, shard: str, index: int, only: str | None = None) -> dict[str, bytes | str]:
        """Sample ``index`` (0-based, in file order) of ``shard``; with ``only`` (a suffix: ``"json"``) just that
        member, e.g. the record without its media, for planning before decoding."""
        table = self.table(shard)
        if not 0 <= index < len(table):
            raise IndexError(f"{shard}: no sample {index} (it holds {len(table)}; run `mavors shards verify`)")
        members = table[index]
        sample: dict[str, bytes | str] = {"__key__": members[0][0].partition(".")[0], "__url__": shard}
        with open(shard, "rb") as f:
            for name, offset, size in members:
                if only is not None and name.partition(".")[2].lower() != only:
                    continue
                f.seek(offset)
                sample[name.partition(".")[2].lower()] = f.read(size)
        return sample
