"""WebDataset shards: deterministic, checksummed, atomically written, resumable, written in parallel.

    mavors shards build manifests/mixtures/demo-stage2.yaml     # select, transcode, write
    mavors shards verify mavors-work/shards/demo-stage2         # checksums, counts, decodability

A shard is a plain tar, one sample per key: ``KEY.json`` (conversation, sample id,
source, task, media metadata, provenance) and the media files ``KEY.mp4`` /
``KEY.jpg`` (several media: ``KEY.0.jpg``, ``KEY.1.mp4``, in placeholder order; the
JSON's ``media[i].file`` names each one's extension inside the sample). Stock
``webdataset.WebDataset`` and ``tar`` read it. Every member header is fixed
(mtime 0, uid/gid 0, mode 0444, no user names) and samples go in a fixed order, so a
shard is a function of its samples: the same seed gives byte-identical shards.

Writing a shard: to ``.NAME.partial``, fsync, rename to ``NAME``, fsync the folder;
then the driver records name, sha256, sample count and size in the ``shards`` table.
A shard is complete only when its row exists and the file's sha256 matches it: a
rerun after a crash skips those, deletes ``*.partial`` files and rewrites anything
else. Each stage directory gets an ``index.json`` listing its shards and counts.

A mixture build has three steps, all restartable:

1. **media**: every video of the selected samples is transcoded once to the fixed
   fps (:mod:`curation.transcode`), every image is decoded once; results go to
   ``shard_media``. Media that fail quarantine their samples (stage ``shards``).
2. **plan**: the remaining samples, in draw order, are packed into shards bounded by
   ``max_samples`` and ``max_bytes`` (sizes are exact: tar headers and padding are
   counted); each member's shard is recorded in ``mixture_members.shard``.
3. **write**: Ray tasks each write whole shards and return their rows; the driver
   records them one transaction per shard.

Other record sets (DPO preference pairs) use :func:`write_records` with their own
JSON fields and media.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curation.mixtures import STAGES, MixtureConfig, stage_slug
from curation.transcode import (MediaInfo, TranscodeConfig, TranscodeRefusal, check_image, decode_check, file_sha256,
                                transcode_video)

if TYPE_CHECKING:
    from core.catalog import Catalog
    from core.settings import RaySettings

log = logging.getLogger(__name__)

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 10240: tarfile pads the archive to a multiple of this
INDEX_NAME = "index.json"
_KEY_OK = re.compile(r"[^A-Za-z0-9_-]")


# -- records and their exact tar size ---------------------------------------------------------------
@dataclass
class ShardRecord:
    """One sample of a shard: ``KEY.json`` from ``meta`` plus media members ``KEY.<suffix>``.

    ``files``: (suffix, content) with content a path or bytes; suffix like ``mp4`` or ``0.jpg``.
    """

    key: str
    meta: dict[str, Any]
    files: list[tuple[str, str | Path | bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,80}", self.key):
            raise ValueError(f"shard key {self.key!r}: use 1-80 characters of [A-Za-z0-9_-] (see sample_key)")

    @classmethod
    def from_sample(cls, sample: Mapping[str, Any]) -> ShardRecord:
        """From a webdataset-style dict: ``__key__``, ``json`` (bytes, str or dict) and media members (bytes);
        other ``__dunder__`` entries (``__url__``, ``__local_path__``) are reader metadata and dropped."""
        meta = sample["json"]
        meta = json.loads(meta) if isinstance(meta, (bytes, str)) else dict(meta)
        files = [(k, v) for k, v in sample.items() if k != "json" and not k.startswith("__")]
        return cls(sample["__key__"], meta, files)

    def json_bytes(self) -> bytes:
        return canonical_json(self.meta)

    def members(self) -> list[tuple[str, str | Path | bytes]]:
        """(member name, content) in write order: the JSON first, then the media."""
        return [(f"{self.key}.json", self.json_bytes())] + [(f"{self.key}.{s}", c) for s, c in self.files]

    def tar_bytes(self) -> int:
        """Bytes this record takes in a tar (headers and padding included)."""
        return sum(member_tar_bytes(_content_size(c)) for _, c in self.members())


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces, UTF-8)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sample_key(sample_id: str) -> str:
    """A WebDataset key for a sample id: readable, no dots or slashes, unique by an md5 suffix."""
    return f"{_KEY_OK.sub('_', sample_id)[:60]}-{hashlib.md5(sample_id.encode()).hexdigest()[:10]}"


def member_tar_bytes(size: int) -> int:
    """One header block plus the data padded to whole blocks (names are <= 100 ASCII chars: no extra headers)."""
    return BLOCK + -(-size // BLOCK) * BLOCK


def tar_bytes(record_bytes: int) -> int:
    """Size of a tar whose members take ``record_bytes``: two zero end blocks, padded to a whole record."""
    return -(-(record_bytes + 2 * BLOCK) // RECORD) * RECORD


def _content_size(content: str | Path | bytes) -> int:
    return len(content) if isinstance(content, bytes) else os.path.getsize(content)


def pack(sizes: Sequence[int], max_samples: int, max_bytes: int) -> list[range]:
    """Split records (tar sizes, in order) into consecutive shards within both bounds.

    A record alone over ``max_bytes`` gets a shard of its own (it cannot be split).
    """
    groups, start, used = [], 0, 0
    for i, size in enumerate(sizes):
        n = i - start
        if n and (n >= max_samples or tar_bytes(used + size) > max_bytes):
            groups.append(range(start, i))
            start, used = i, 0
        used += size
    if start < len(sizes):
        groups.append(range(start, len(sizes)))
    return groups


# -- writing one shard ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardInfo:
    """A completed shard, as recorded in the ``shards`` table and the index."""

    name: str
    path: str
    sha256: str
    n_samples: int
    bytes: int


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


def _write_member(out: _DurableFile, name: str, content: str | Path | bytes, chunk: int = 4 << 20) -> None:
    if isinstance(content, bytes):
        out.write(_fixed_header(name, len(content)))
        out.write(content)
        size = len(content)
    else:
        with open(content, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            out.write(_fixed_header(name, size))
            while block := f.read(chunk):
                out.write(block)
    if size % BLOCK:
        out.write(bytes(BLOCK - size % BLOCK))


def write_shard(path: str | Path, records: Sequence[ShardRecord], *, durable: bool = True) -> ShardInfo:
    """Write one shard atomically (temp name, fsync, rename, fsync folder); returns its info.

    The bytes are exactly what ``tarfile`` (ustar) writes for these members and headers:
    header + data padded to 512-byte blocks per member, two zero blocks, padding to a
    10240-byte record. Runs in Ray workers: it touches only the file system, never the catalog.
    ``durable=False`` skips the fsyncs (scratch output, or measuring the disk's share of the cost).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    out = _DurableFile(tmp, sync_every=32 << 20 if durable else None)
    try:
        for record in records:
            for name, content in record.members():
                _write_member(out, name, content)
        out.write(bytes(tar_bytes(out.n) - out.n))  # end-of-archive blocks and record padding
    except BaseException:
        out.abort()
        raise
    sha = out.close()
    tmp.replace(path)
    if durable:
        fsync_dir(path.parent)
    return ShardInfo(path.name, str(path), sha, len(records), out.n)


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
    tmp.write_bytes(json.dumps(index, indent=1, sort_keys=True).encode() + b"\n")
    tmp.replace(path)
    return path


def clean_partials(out_dir: Path) -> list[Path]:
    """Delete leftovers of interrupted writes (``.*.partial``); returns what was removed."""
    removed = sorted(out_dir.glob(".*.partial")) if out_dir.exists() else []
    for p in removed:
        p.unlink()
    return removed


def is_complete(path: Path, sha256: str | None) -> bool:
    """A shard counts as done only if a recorded checksum exists and the file still matches it."""
    return sha256 is not None and path.exists() and file_sha256(path) == sha256


def write_records(records: Iterable[ShardRecord], out_dir: str | Path, *, prefix: str, max_samples: int,
                  max_bytes: int, completed: Mapping[str, str] | None = None,
                  index_header: Mapping[str, Any] | None = None) -> list[ShardInfo]:
    """Pack arbitrary records (e.g. DPO pairs) into shards ``PREFIX-NNNNNN.tar`` plus ``index.json``.

    ``completed``: shard name -> sha256 of shards already recorded (e.g. from the
    ``shards`` table); those whose file still matches are kept, not rewritten. Record
    keys must be unique. The caller records the returned infos (:func:`record_shard`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_partials(out_dir)
    records = list(records)
    keys = [r.key for r in records]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"record key {dup!r} appears more than once")
    completed = completed or {}
    infos = []
    for i, group in enumerate(pack([r.tar_bytes() for r in records], max_samples, max_bytes)):
        path = out_dir / shard_name(prefix, i)
        batch = [records[j] for j in group]
        if is_complete(path, completed.get(path.name)):
            infos.append(_info_of_existing(path, batch))
        else:
            infos.append(write_shard(path, batch))
    write_index(out_dir, infos, **dict(index_header or {}))
    return infos


def _info_of_existing(path: Path, records: Sequence[ShardRecord]) -> ShardInfo:
    return ShardInfo(path.name, str(path), file_sha256(path), len(records), path.stat().st_size)


def record_shard(cat: Catalog, mixture: str, stage: str, info: ShardInfo, run_id: str | None, *,
                 con=None) -> None:
    """The ``shards`` row of a completed shard (replacing an older row of the same name)."""
    cat.insert("shards", [{"mixture": mixture, "stage": stage, "name": info.name, "path": info.path,
                           "sha256": info.sha256, "n_samples": info.n_samples, "bytes": info.bytes,
                           "run_id": run_id}], on_conflict="replace", con=con)


# -- parallel map: Ray tasks, or in-process ------------------------------------------------------------
def run_tasks(fn: Callable[..., Any], jobs: Sequence[tuple], *, parallel: bool,
              ray_settings: RaySettings | None, on_result: Callable[[Any], None]) -> None:
    """Run ``fn(*job)`` for every job (Ray tasks when ``parallel``); ``on_result`` runs in the driver
    as each finishes, so results are recorded while others still run."""
    if not parallel or len(jobs) <= 1:
        for job in jobs:
            on_result(fn(*job))
        return
    import ray

    from core.ray_runtime import ensure_ray

    ensure_ray(ray_settings)
    remote = ray.remote(num_cpus=1, max_retries=2)(fn)
    pending = [remote.remote(*job) for job in jobs]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        on_result(ray.get(done[0]))


# -- a mixture build ---------------------------------------------------------------------------------
def prepare_media(kind: str, media_hash: str, src: str, cache_dir: str, cfg: TranscodeConfig
                  ) -> tuple[str, MediaInfo | None, str | None, str | None]:
    """Transcode a video into the cache (or check an image): (hash, info, refusal reason, detail)."""
    try:
        if kind == "image":
            return media_hash, check_image(src), None, None
        dst = Path(cache_dir) / f"{media_hash}.mp4"
        return media_hash, transcode_video(src, dst, cfg), None, None
    except TranscodeRefusal as e:
        return media_hash, None, e.reason, e.detail


def _prepare_batch(jobs: list[tuple], cfg: TranscodeConfig) -> list[tuple]:
    return [prepare_media(*job, cfg) for job in jobs]


@dataclass
class StageBuild:
    """What one stage of a mixture build produced."""

    stage: str
    out_dir: Path
    shards: list[ShardInfo]
    written: list[str]  # shards written in this run (the others were complete already)
    skipped: list[str]
    removed: list[str]  # partial or stale files deleted
    quarantined: dict[str, int]  # reason -> samples

    @property
    def n_samples(self) -> int:
        return sum(s.n_samples for s in self.shards)


def stage_dir(out_root: str | Path, mixture: str, stage: str) -> Path:
    return Path(out_root) / mixture / stage_slug(stage)


def build_shards(cat: Catalog, mixture: MixtureConfig, out_root: str | Path, *, stages: Sequence[str] | None = None,
                 parallel: bool = True, ray_settings: RaySettings | None = None, run_id: str | None = None,
                 media_batch: int = 8, on_shard: Callable[[ShardInfo], None] | None = None) -> list[StageBuild]:
    """Write the shards of an already selected mixture (see :func:`curation.mixtures.select_mixture`).

    Per stage: ``OUT_ROOT/<mixture>/s<stage>/<mixture>-s<stage>-NNNNNN.tar`` + ``index.json``.
    Transcoded videos are cached in ``OUT_ROOT/.media/<profile>/``. ``on_shard`` is called
    after each shard is recorded. Safe to rerun after any crash: finished work is skipped.
    """
    if not cat.scalar("SELECT count(*) FROM mixtures WHERE name = ?", [mixture.name]):
        raise ValueError(f"mixture {mixture.name!r} is not selected in {cat.path}; select it first")
    out_root = Path(out_root)
    cfg = mixture.transcode.resolved()  # fps/GOP from the model config, once, in the driver
    profile = cfg.profile_id()
    selected = [s for s in STAGES if s in mixture.stages and (stages is None or s in stages)]
    _prepare_media(cat, mixture.name, selected, out_root / ".media" / profile, cfg, profile,
                   parallel=parallel, ray_settings=ray_settings, run_id=run_id, batch=media_batch)
    builds = []
    for stage in selected:
        out_dir = stage_dir(out_root, mixture.name, stage)
        prefix = f"{mixture.name}-{stage_slug(stage)}"
        plan = _plan_stage(cat, mixture, stage, profile, out_dir, prefix)
        builds.append(_write_stage(cat, mixture, stage, out_dir, plan, cfg, parallel=parallel,
                                   ray_settings=ray_settings, run_id=run_id, on_shard=on_shard))
    return builds


def _prepare_media(cat: Catalog, mixture: str, stages: list[str], cache_dir: Path, cfg: TranscodeConfig, profile: str,
                   *, parallel: bool, ray_settings: RaySettings | None, run_id: str | None, batch: int) -> None:
    """Transcode/check each media of the stages' samples once (again if its cached file is gone);
    record results, quarantine failures."""
    rows = cat.query(
        """SELECT DISTINCT md.media_hash, md.kind, md.storage_path, sm.path AS prepared
           FROM mixture_members mm JOIN samples s USING (sample_id),
                unnest(s.media_hashes) AS u(h) JOIN media md ON md.media_hash = u.h
                LEFT JOIN shard_media sm ON sm.media_hash = md.media_hash AND sm.profile = ?
           WHERE mm.mixture = ? AND list_contains(?, mm.stage)
           ORDER BY md.media_hash""", [profile, mixture, stages])
    todo = [r for r in rows if r["prepared"] is None or not os.path.exists(r["prepared"])]
    if not todo:
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(r["kind"], r["media_hash"], r["storage_path"], str(cache_dir)) for r in todo]
    chunks = [(jobs[i:i + batch], cfg) for i in range(0, len(jobs), batch)]

    def record(results: list[tuple]) -> None:
        ok = [{"media_hash": h, "profile": profile, "run_id": run_id,
               **info.as_dict()} for h, info, _, _ in results if info is not None]
        bad = {h: (reason, detail) for h, info, reason, detail in results if info is None}
        with cat.transaction() as con:
            cat.insert("shard_media", ok, on_conflict="replace", con=con)
            if bad:
                victims = con.execute(
                    """SELECT DISTINCT s.source, s.item, u.h FROM mixture_members mm JOIN samples s USING (sample_id),
                              unnest(s.media_hashes) AS u(h)
                       WHERE mm.mixture = ? AND list_contains(?, u.h)""", [mixture, list(bad)]).fetchall()
                cat.quarantine([{"source": src, "item": item, "reason": bad[h][0], "detail": bad[h][1],
                                 "stage": "shards", "run_id": run_id} for src, item, h in victims], con=con)
        for h, (reason, detail) in bad.items():
            log.warning("media %s refused for shards: %s: %s", h[:12], reason, detail)

    run_tasks(_prepare_batch, chunks, parallel=parallel, ray_settings=ray_settings, on_result=record)


@dataclass
class _PlannedShard:
    path: Path
    records: list[ShardRecord]


def _plan_stage(cat: Catalog, mixture: MixtureConfig, stage: str, profile: str, out_dir: Path,
                prefix: str) -> list[_PlannedShard]:
    """Records of the stage's shardable members in draw order, packed; the plan is recorded per member."""
    rows = cat.query(
        """SELECT mm.sample_id, mm.source, mm.task, mm.entry, mm.dedup_policy, mm.dedup_reason,
                  s.item, s.conversation, s.media_hashes,
                  list(struct_pack(media_hash := sm.media_hash, original_bytes := md.bytes, path := sm.path,
                                   ext := sm.ext, sha256 := sm.sha256, bytes := sm.bytes, kind := sm.kind,
                                   width := sm.width, height := sm.height, fps := sm.fps, n_frames := sm.n_frames,
                                   duration_s := sm.duration_s, codec := sm.codec) ORDER BY u.i) AS media
           FROM mixture_members mm JOIN samples s USING (sample_id)
           LEFT JOIN unnest(s.media_hashes) WITH ORDINALITY AS u(h, i) ON true
           LEFT JOIN shard_media sm ON sm.media_hash = u.h AND sm.profile = $profile
           LEFT JOIN media md ON md.media_hash = u.h
           WHERE mm.mixture = $mixture AND mm.stage = $stage
             AND NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.source = s.source AND q.item = s.item)
           GROUP BY ALL
           ORDER BY min(mm.draw_key), mm.sample_id""",
        {"mixture": mixture.name, "stage": stage, "profile": profile})
    records = []
    for r in rows:
        media = [m for m in (r["media"] or []) if m["media_hash"] is not None]
        if len(media) != len(r["media_hashes"]) or any(m["path"] is None for m in media):
            raise RuntimeError(f"sample {r['sample_id']}: media not prepared for profile {profile} "
                               "(the media step did not finish); rerun the build")
        suffixes = [m["ext"] if len(media) == 1 else f"{i}.{m['ext']}" for i, m in enumerate(media)]
        meta = {
            "sample_id": r["sample_id"], "source": r["source"], "item": r["item"], "task": r["task"],
            "conversation": json.loads(r["conversation"]) if isinstance(r["conversation"], str) else r["conversation"],
            "mixture": mixture.name, "stage": stage, "entry": r["entry"],
            "dedup": {"policy": r["dedup_policy"], "reason": r["dedup_reason"]} if r["dedup_policy"] else None,
            "media": [{"file": sfx, **{k: m[k] for k in ("media_hash", "kind", "sha256", "bytes", "width", "height",
                                                         "fps", "n_frames", "duration_s", "codec")},
                       "transcode_profile": profile if m["kind"] == "video" else None}
                      for sfx, m in zip(suffixes, media)],
        }
        records.append(ShardRecord(sample_key(r["sample_id"]), meta,
                                   [(sfx, m["path"]) for sfx, m in zip(suffixes, media)]))
    groups = pack([rec.tar_bytes() for rec in records], mixture.shards.max_samples, mixture.shards.max_bytes)
    plan = [_PlannedShard(out_dir / shard_name(prefix, i), [records[j] for j in g]) for i, g in enumerate(groups)]
    import pyarrow as pa

    assignment = pa.table({"sample_id": [rec.meta["sample_id"] for p in plan for rec in p.records],
                           "shard": [p.path.name for p in plan for _ in p.records]})
    with cat.transaction() as con:
        con.execute("UPDATE mixture_members SET shard = NULL WHERE mixture = ? AND stage = ?", [mixture.name, stage])
        con.register("_plan", assignment)
        try:
            con.execute("""UPDATE mixture_members m SET shard = p.shard FROM _plan p
                           WHERE m.mixture = ? AND m.stage = ? AND m.sample_id = p.sample_id""",
                        [mixture.name, stage])
        finally:
            con.unregister("_plan")
    return plan


def _write_stage(cat: Catalog, mixture: MixtureConfig, stage: str, out_dir: Path, plan: list[_PlannedShard],
                 cfg: TranscodeConfig, *, parallel: bool, ray_settings: RaySettings | None, run_id: str | None,
                 on_shard: Callable[[ShardInfo], None] | None) -> StageBuild:
    out_dir.mkdir(parents=True, exist_ok=True)
    removed = [p.name for p in clean_partials(out_dir)]
    planned = {p.path.name for p in plan}
    for stale in sorted(out_dir.glob("*.tar")):
        if stale.name not in planned:
            stale.unlink()
            removed.append(stale.name)
    recorded = {r["name"]: r["sha256"] for r in cat.query(
        "SELECT name, sha256 FROM shards WHERE mixture = ? AND stage = ?", [mixture.name, stage])}
    with cat.transaction() as con:  # rows of shards no longer in the plan
        for name in set(recorded) - planned:
            con.execute("DELETE FROM shards WHERE mixture = ? AND stage = ? AND name = ?", [mixture.name, stage, name])
    done = {p.path.name for p in plan if is_complete(p.path, recorded.get(p.path.name))}
    infos: dict[str, ShardInfo] = {p.path.name: _info_of_existing(p.path, p.records) for p in plan
                                   if p.path.name in done}
    written: list[str] = []

    def record(info: ShardInfo) -> None:
        with cat.transaction() as con:
            record_shard(cat, mixture.name, stage, info, run_id, con=con)
        infos[info.name] = info
        written.append(info.name)
        if on_shard is not None:
            on_shard(info)

    jobs = [(str(p.path), p.records) for p in plan if p.path.name not in done]
    run_tasks(write_shard, jobs, parallel=parallel, ray_settings=ray_settings, on_result=record)
    shards = [infos[p.path.name] for p in plan]
    write_index(out_dir, shards, mixture=mixture.name, stage=stage, seed=mixture.seed,
                transcode_profile=cfg.profile_id(), fps=cfg.fps, gop=cfg.gop)
    quarantined = {r["reason"]: r["n"] for r in cat.query(
        """SELECT q.reason, count(DISTINCT mm.sample_id) AS n FROM mixture_members mm JOIN samples s USING (sample_id)
           JOIN quarantine q ON q.source = s.source AND q.item = s.item
           WHERE mm.mixture = ? AND mm.stage = ? GROUP BY q.reason ORDER BY q.reason""", [mixture.name, stage])}
    return StageBuild(stage, out_dir, shards, sorted(written), sorted(done), removed, quarantined)


# -- verification --------------------------------------------------------------------------------------
@dataclass
class VerifyReport:
    """Result of :func:`verify_shards`: problems name the shard (and sample) they concern."""

    n_shards: int = 0
    n_samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def index_files(root: str | Path) -> list[Path]:
    """``index.json`` of ``root`` itself, else of every shard folder below it."""
    root = Path(root)
    if (root / INDEX_NAME).exists():
        return [root / INDEX_NAME]
    return sorted(p for p in root.rglob(INDEX_NAME) if ".media" not in p.parts)


def iter_tar_samples(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {suffix: bytes}) per sample of a shard, in tar order (consecutive members with one key)."""
    key, files = None, {}
    with tarfile.open(path, "r") as tar:
        for m in tar:
            if not m.isfile():
                continue
            k, _, suffix = m.name.partition(".")
            if k != key and key is not None:
                yield key, files
                files = {}
            key = k
            files[suffix] = tar.extractfile(m).read()
    if key is not None:
        yield key, files


def verify_shards(root: str | Path, *, recorded: Mapping[str, str] | None = None,
                  decode: bool = True) -> VerifyReport:
    """Check every shard listed by the index files under ``root``.

    Per shard: the file exists, its sha256 and size match the index (and ``recorded``,
    name -> sha256 from the catalog, when given), it reads as a tar, its sample count
    matches, every sample has its JSON and each media file the JSON lists, with the
    listed sha256, and (``decode``) every media decodes. Sample ids must be unique
    across the shards of one index (one stage).
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
        for key, files in iter_tar_samples(path):
            n += 1
            if "json" not in files:
                problems.append(f"shard {name}: sample {key} has no .json")
                continue
            meta = json.loads(files["json"])
            sid = meta.get("sample_id", key)
            if sid in seen:
                problems.append(f"shard {name}: sample {sid} also in shard {seen[sid]}")
            seen[sid] = name
            for m in meta.get("media", []):
                data = files.get(m["file"])
                if data is None:
                    problems.append(f"shard {name}: sample {sid} lacks its .{m['file']}")
                elif hashlib.sha256(data).hexdigest() != m.get("sha256", hashlib.sha256(data).hexdigest()):
                    problems.append(f"shard {name}: sample {sid} .{m['file']} does not match its sha256")
                elif decode:
                    try:
                        decode_check(data, m["kind"])
                    except TranscodeRefusal as e:
                        problems.append(f"shard {name}: sample {sid} .{m['file']} does not decode ({e})")
    except (tarfile.TarError, OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        problems.append(f"shard {name}: unreadable after {n} samples ({type(e).__name__}: {e})")
    if n != entry["n_samples"]:
        problems.append(f"shard {name}: {n} samples, index says {entry['n_samples']}")
    report.n_samples += n
    return problems


def shard_urls(root: str | Path) -> list[str]:
    """Paths of all shards listed by the index files under ``root`` (for ``webdataset.WebDataset``)."""
    return [str(p.parent / e["name"]) for p in index_files(root) for e in json.loads(p.read_text())["shards"]]


