"""A mixture build: a selected mixture's stages as shards, restartable at every step.

    mavors shards build manifests/mixtures/demo-stage2.yaml     # select, transcode, write

Per stage: ``OUT_ROOT/<mixture>/s<stage>/<mixture>-s<stage>-NNNNNN.tar`` + ``index.json``
(:func:`stage_dir` is the one place that knows this layout; the trainer is handed the folder,
by the curate flow or from the ``shards`` table, :func:`recorded_stage_dirs`). Three steps:

1. **media**: every video of the selected samples is transcoded once to the fixed
   fps (:mod:`curation.transcode`), every image is decoded once; results go to
   ``shard_media``. Media that fail, or that the model cannot encode (smaller than one
   ``transcode.patch_size`` patch on a side, no frames: ``model.preprocessing.check_encodable``),
   quarantine their samples (stage ``shards``). A fault of our own output (disk full, read-only,
   permissions: :class:`core.storage.StorageError`) quarantines nothing: it stops the build.
2. **plan**: the remaining samples, in draw order, become records
   (:func:`curation.shards.format.sample_record`) packed into shards bounded by
   ``max_samples`` and ``max_bytes`` as they stream from the catalog (a page at a time: a
   stage of any size); each member's shard is recorded in ``mixture_members.shard``.
3. **write**: while the plan streams, Ray tasks each write whole shards
   (:func:`curation.shards.writer.write_shard`, a few per CPU in flight) and return their infos;
   the driver records them in ``shards``, one transaction per shard.

A shard is complete only when its row exists, the row was written from the same plan
(``plan_sha256``: members and their JSON) and the file's sha256 matches it: a rerun after a
crash or a failed write skips those, deletes ``*.partial`` files and rewrites anything else.
"""
from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import progress
from core.storage import storage_errors
from curation.media import MediaInfo
from curation.mixtures import STAGES, MixtureConfig, stage_slug
from curation.shards.format import ShardRecord, sample_record
from curation.shards.writer import (Packer, ShardInfo, clean_partials, existing_info, is_complete, plan_sha256,
                                    record_tar_bytes, shard_name, write_index, write_shard)
from curation.transcode import TranscodeConfig, check_image, transcode_video
from model.preprocessing import MediaError, check_encodable

if TYPE_CHECKING:
    from core.catalog import Catalog
    from core.settings import RaySettings

log = logging.getLogger(__name__)

MEDIA_FIELDS = ("media_hash", "kind", "sha256", "bytes", "width", "height", "fps", "n_frames", "duration_s", "codec")
"""What a mixture record's ``media`` entries carry of the prepared medium (``shard_media``)."""


def record_shard(cat: Catalog, mixture: str, stage: str, info: ShardInfo, run_id: str | None, *,
                 con=None) -> None:
    """The ``shards`` row of a completed shard (replacing an older row of the same name)."""
    cat.insert("shards", [{"mixture": mixture, "stage": stage, "name": info.name, "path": info.path,
                           "sha256": info.sha256, "n_samples": info.n_samples, "bytes": info.bytes,
                           "plan_sha256": info.plan_sha256, "run_id": run_id}], on_conflict="replace", con=con)


def recorded_stage_dirs(cat: Catalog) -> dict[str, dict[str, str]]:
    """Mixture name -> mixture stage -> the folder its recorded shards lie in (``shards`` table).

    The same mapping the curate flow returns for what it built, as absolute folders (stored paths
    resolve against the catalog's folder: :meth:`core.catalog.Catalog.resolved`).
    """
    folders: dict[tuple[str, str], set[str]] = {}
    for r in cat.query("SELECT mixture, stage, path FROM shards"):
        folders.setdefault((r["mixture"], r["stage"]), set()).add(str(cat.resolved(r["path"]).parent))
    out: dict[str, dict[str, str]] = {}
    for (mixture, stage), found in sorted(folders.items()):
        if len(found) > 1:
            raise ValueError(f"mixture {mixture!r} stage {stage!r}: shards recorded in several folders "
                             f"{sorted(found)}; rebuild it (mavors shards build)")
        out.setdefault(mixture, {})[stage] = found.pop()
    return out


def recorded_out_root(cat: Catalog, mixture: str) -> Path | None:
    """The shard root (``OUT_ROOT`` of :func:`stage_dir`) the mixture's recorded shards were built under; None
    when it has none recorded."""
    folders = recorded_stage_dirs(cat).get(mixture, {})
    roots = {Path(folder).parent.parent for folder in folders.values()}
    if len(roots) > 1:
        raise ValueError(f"mixture {mixture!r}: stages built under several roots {sorted(map(str, roots))}; "
                         "rebuild it (mavors shards build --out)")
    return roots.pop() if roots else None


def run_tasks(fn: Callable[..., Any], jobs: Iterable[tuple], *, parallel: bool,
              ray_settings: RaySettings | None, on_result: Callable[[Any], None], label: str) -> None:
    """Run ``fn(*job)`` for every job (Ray tasks when ``parallel``); ``on_result`` runs in the driver
    as each finishes, so results are recorded while others still run. ``jobs`` may be a stream (a
    generator): at most two tasks per cluster CPU are submitted ahead of the results, so a stream
    of any length is never held whole. A task that fails stops the run with its own exception (e.g.
    :class:`core.storage.StorageError`, not Ray's wrapper of it); the tasks still pending are cancelled.
    ``label``: the progress task (:mod:`core.progress`) counting jobs (of a sequence's length; a stream's
    total is unknown)."""
    if isinstance(jobs, Sequence) and not jobs:
        return
    with progress.task(label, total=len(jobs) if isinstance(jobs, Sequence) else None) as bar:
        for result in _results(fn, iter(jobs), parallel, ray_settings):
            on_result(result)
            bar.advance()


def _results(fn: Callable[..., Any], jobs: Iterator[tuple], parallel: bool,
             ray_settings: RaySettings | None) -> Iterator[Any]:
    head = list(itertools.islice(jobs, 2))
    jobs = itertools.chain(head, jobs)
    if not parallel or len(head) <= 1:
        for job in jobs:
            yield fn(*job)
        return
    import ray

    from core.ray_runtime import ensure_ray

    ensure_ray(ray_settings)
    remote = ray.remote(num_cpus=1, max_retries=2)(fn)
    ahead = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    pending: list = []
    try:
        while True:
            pending += [remote.remote(*job) for job in itertools.islice(jobs, ahead - len(pending))]
            if not pending:
                return
            done, pending = ray.wait(pending, num_returns=1)
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayTaskError as e:
                raise e.cause from e
            yield result
    finally:
        for ref in pending:
            ray.cancel(ref)


# -- a mixture build ---------------------------------------------------------------------------------
def prepare_media(kind: str, media_hash: str, src: str, cache_dir: str, cfg: TranscodeConfig
                  ) -> tuple[str, MediaInfo | None, str | None, str | None]:
    """Transcode a video into the cache (or check an image), then check the result is encodable by the model
    (``check_encodable`` with ``cfg.patch_size``, on what the loader will decode): (hash, info, refusal reason,
    detail)."""
    dst = Path(cache_dir) / f"{media_hash}.mp4"
    try:
        info = check_image(src) if kind == "image" else transcode_video(src, dst, cfg)
        check_encodable(kind, info.width, info.height, cfg.patch_size, name=src, n_frames=info.n_frames)
        return media_hash, info, None, None
    except MediaError as e:  # the media's fault; a StorageError (our cache's) stops the run instead
        if kind == "video":
            with storage_errors(dst):
                dst.unlink(missing_ok=True)  # no cached copy of a refused video
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
    todo = [r for r in rows if r["prepared"] is None or not cat.resolved(r["prepared"]).exists()]
    if not todo:
        return
    with storage_errors(cache_dir):
        cache_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(r["kind"], r["media_hash"], str(cat.resolved(r["storage_path"])), str(cache_dir)) for r in todo]
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

    run_tasks(_prepare_batch, chunks, parallel=parallel, ray_settings=ray_settings, on_result=record,
              label=f"transcode + check media (batches of {batch})")




@dataclass
class _PlannedShard:
    path: Path
    records: list[ShardRecord]


PLAN_PAGE = 10_000
"""Plan rows read at a time from the stage's scratch copy of them (the plan never holds every sample)."""

_PLAN_ROWS = """
    SELECT mm.sample_id, mm.source, mm.task, mm.entry, mm.dedup_policy, mm.dedup_reason,
           s.item, s.conversation, len(s.media_hashes) AS n_media,
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
    ORDER BY min(mm.draw_key), mm.sample_id"""
"""A stage's shardable members in draw order, each with its prepared media (NULL fields: not prepared)."""


def _plan_stage(cat: Catalog, mixture: MixtureConfig, stage: str, profile: str, out_dir: Path,
                prefix: str) -> Iterator[_PlannedShard]:
    """The stage's shards, packed as the records stream in draw order; each member's shard is recorded in
    ``mixture_members.shard`` once the last shard is planned (until then it is NULL).

    The plan rows are copied once, in order and in Arrow batches (DuckDB sorts, spilling as it must), to a
    scratch Parquet file beside the stage folder and read back :data:`PLAN_PAGE` rows at a time: the catalog
    is not held while shards are written and nothing holds all samples. The members' shards go to a second
    scratch file, then into the catalog in one join. Both files are removed when the plan ends or stops.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    members_of = {"mixture": mixture.name, "stage": stage}
    params = {**members_of, "profile": profile}
    rows_file = out_dir.parent / f".{out_dir.name}.plan.parquet"
    shards_file = out_dir.parent / f".{out_dir.name}.members.parquet"
    with storage_errors(out_dir.parent):
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    packer = Packer(mixture.shards.max_samples, mixture.shards.max_bytes)
    try:
        with cat.transaction() as con:
            con.execute("UPDATE mixture_members SET shard = NULL WHERE mixture = $mixture AND stage = $stage",
                        members_of)
            rows = con.sql(_PLAN_ROWS, params=params).to_arrow_reader(PLAN_PAGE)
            # Python files, not paths: the OS error (errno, "No space left on device") reaches storage_errors,
            # and the file is closed even when closing the Parquet writer fails.
            with storage_errors(rows_file), open(rows_file, "wb") as sink, pq.ParquetWriter(sink, rows.schema) as out:
                for batch in rows:
                    out.write_batch(batch, row_group_size=PLAN_PAGE)
        with storage_errors(shards_file), open(shards_file, "wb") as sink, pq.ParquetWriter(
                sink, pa.schema([("sample_id", pa.string()), ("shard", pa.string())])) as members:
            index, records = 0, []
            with pq.ParquetFile(rows_file) as plan_rows:
                for batch in plan_rows.iter_batches(PLAN_PAGE):
                    for row in batch.to_pylist():
                        record = _stage_record(cat, mixture.name, stage, profile, row)
                        if packer.add(record_tar_bytes(record)):
                            yield _assigned(_PlannedShard(out_dir / shard_name(prefix, index), records), members)
                            index, records = index + 1, []
                        records.append(record)
            if records:
                yield _assigned(_PlannedShard(out_dir / shard_name(prefix, index), records), members)
        with cat.transaction() as con:
            con.execute("""UPDATE mixture_members m SET shard = p.shard FROM read_parquet($members) p
                           WHERE m.mixture = $mixture AND m.stage = $stage AND m.sample_id = p.sample_id""",
                        {**members_of, "members": str(shards_file)})
    finally:
        for scratch in (rows_file, shards_file):
            with storage_errors(scratch):
                scratch.unlink(missing_ok=True)


def _assigned(shard: _PlannedShard, members) -> _PlannedShard:
    """``shard``, its members' names written to the plan's members file first."""
    import pyarrow as pa

    members.write_table(pa.table({"sample_id": [r.meta["sample_id"] for r in shard.records],
                                  "shard": [shard.path.name] * len(shard.records)}, schema=members.schema))
    return shard


def _stage_record(cat: Catalog, mixture: str, stage: str, profile: str, row: dict[str, Any]) -> ShardRecord:
    """One plan row (:data:`_PLAN_ROWS`) as its shard record."""
    media = [m for m in (row["media"] or []) if m["media_hash"] is not None]
    if len(media) != row["n_media"] or any(m["path"] is None for m in media):
        raise RuntimeError(f"sample {row['sample_id']}: media not prepared for profile {profile} "
                           "(the media step did not finish); rerun the build")
    conversation = row["conversation"]
    fields = {
        "sample_id": row["sample_id"], "source": row["source"], "item": row["item"], "task": row["task"],
        "conversation": json.loads(conversation) if isinstance(conversation, str) else conversation,
        "mixture": mixture, "stage": stage, "entry": row["entry"],
        "dedup": {"policy": row["dedup_policy"], "reason": row["dedup_reason"]} if row["dedup_policy"] else None,
    }
    return sample_record(row["sample_id"], fields, [
        (str(cat.resolved(m["path"])), m["ext"], {**{k: m[k] for k in MEDIA_FIELDS},
                                                  "transcode_profile": profile if m["kind"] == "video" else None})
        for m in media])


def _write_stage(cat: Catalog, mixture: MixtureConfig, stage: str, out_dir: Path, plan: Iterable[_PlannedShard],
                 cfg: TranscodeConfig, *, parallel: bool, ray_settings: RaySettings | None, run_id: str | None,
                 on_shard: Callable[[ShardInfo], None] | None) -> StageBuild:
    """Write the planned shards not complete yet while the plan streams; then remove what the plan no longer
    holds (files and rows) and write the index."""
    with storage_errors(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    removed = [p.name for p in clean_partials(out_dir)]
    recorded = {r["name"]: r for r in cat.query(
        "SELECT name, sha256, plan_sha256 FROM shards WHERE mixture = ? AND stage = ?", [mixture.name, stage])}
    planned: list[str] = []
    infos: dict[str, ShardInfo] = {}
    done: list[str] = []
    written: list[str] = []

    def jobs() -> Iterator[tuple]:
        for p in plan:
            planned.append(p.path.name)
            row = recorded.get(p.path.name)
            # done: the row's checksum matches the file and the row was written from this plan (same members, JSON)
            if (row is not None and row["plan_sha256"] == (plan_hash := plan_sha256(p.records))
                    and is_complete(p.path, row["sha256"])):
                infos[p.path.name] = existing_info(p.path, p.records, row["sha256"], plan_hash)
                done.append(p.path.name)
            else:
                yield str(p.path), p.records

    def record(info: ShardInfo) -> None:
        with cat.transaction() as con:
            record_shard(cat, mixture.name, stage, info, run_id, con=con)
        infos[info.name] = info
        written.append(info.name)
        if on_shard is not None:
            on_shard(info)

    run_tasks(write_shard, jobs(), parallel=parallel, ray_settings=ray_settings, on_result=record,
              label=f"shards {mixture.name} stage {stage}")
    kept = set(planned)
    for stale in sorted(out_dir.glob("*.tar")):
        if stale.name not in kept:
            with storage_errors(stale):
                stale.unlink()
            removed.append(stale.name)
    with cat.transaction() as con:  # rows of shards no longer in the plan
        for name in set(recorded) - kept:
            con.execute("DELETE FROM shards WHERE mixture = ? AND stage = ? AND name = ?", [mixture.name, stage, name])
    shards = [infos[name] for name in planned]
    write_index(out_dir, shards, mixture=mixture.name, stage=stage, seed=mixture.seed,
                transcode_profile=cfg.profile_id(), fps=cfg.fps, gop=cfg.gop)
    quarantined = {r["reason"]: r["n"] for r in cat.query(
        """SELECT q.reason, count(DISTINCT mm.sample_id) AS n FROM mixture_members mm JOIN samples s USING (sample_id)
           JOIN quarantine q ON q.source = s.source AND q.item = s.item
           WHERE mm.mixture = ? AND mm.stage = ? GROUP BY q.reason ORDER BY q.reason""", [mixture.name, stage])}
    return StageBuild(stage, out_dir, shards, sorted(written), sorted(done), removed, quarantined)

