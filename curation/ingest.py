"""Ingest sources into the catalog: read annotations, hash and probe media on Ray Data, write one transaction per source.

    mavors ingest manifests/sources/demo/*.yaml          # or, from Python:
    python -c "from curation.ingest import ingest; ..."

Steps, per call:
1. every source's annotations are read into items (bad lines/items refused with a reason), streamed into a
   Parquet file per source (:func:`stage_items`), so memory does not grow with the number of items; large
   sources are read side by side in worker processes (:func:`stage_sources`);
2. the distinct media files of all sources are hashed (streaming sha256) and probed (Pillow / PyAV)
   by Ray Data tasks, which return rows and never touch the catalog (DuckDB has one writer);
3. for each source, the driver writes ``sources``, ``media``, ``samples`` and ``quarantine`` rows in
   ONE transaction, so a crash leaves a source either fully ingested or untouched: DuckDB reads the staged
   Parquet and joins the probe results in SQL (:func:`write_source`); no row becomes a Python object.

Re-ingesting adds nothing: media rows are keyed by content hash (the same bytes reached from two
sources are one row), samples by ``<source>/<item>``; an item whose content hash changed replaces
its row; refusals are keyed by (source, item, stage, reason) and a refusal whose item is now good
(or gone) is removed. Samples whose item disappeared from the source are kept (captions, scores and
mixtures cite them) and counted as ``stale``.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core import progress
from core.catalog import Catalog
from curation.media import hash_and_probe
from core.settings import RaySettings
from curation.sources import SourceManifest, iter_items
from model.preprocessing import MediaError

STAGE = "ingest"
STAGE_BATCH_ROWS = 10_000
"""Items per staged Parquet row group: what one source's read holds in memory at a time."""

MediaKey = tuple[str, str]  # (absolute path, "image" | "video")


@dataclass
class SourceReport:
    """What one source's ingest did (numbers of items)."""

    source: str
    items: int = 0
    new: int = 0
    replaced: int = 0
    unchanged: int = 0
    quarantined: Counter = field(default_factory=Counter)  # reason -> count
    new_media: int = 0
    stale: int = 0  # samples in the catalog whose item this read no longer yields (kept: later tables cite them)


def content_sha256(conversation: list[dict], media_hashes: Sequence[str]) -> str:
    """Hash of what a sample says and shows: a changed text or changed media bytes change it."""
    payload = json.dumps({"conversation": conversation, "media": list(media_hashes)},
                         sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# Columns of a probe result; typed, so a batch where every file failed (all nulls) still has the same schema.
_PROBE_SCHEMA = [("path", "string"), ("kind", "string"), ("reason", "string"), ("detail", "string"),
                 ("media_hash", "string"), ("bytes", "int64"), ("width", "int64"), ("height", "int64"),
                 ("duration_s", "float64"), ("fps", "float64"), ("n_frames", "int64"), ("codec", "string")]


def _probe_rows(batch: dict) -> list[dict]:
    """Hash + probe each (path, kind) of a batch; a failure becomes a row with a reason."""
    rows = []
    for path, kind in zip(batch["path"], batch["kind"]):
        row = dict.fromkeys(name for name, _ in _PROBE_SCHEMA)
        row.update(path=str(path), kind=str(kind))
        try:
            info = hash_and_probe(str(path), str(kind))
            row.update(media_hash=info.sha256, bytes=info.bytes, width=info.width, height=info.height,
                       duration_s=info.duration_s, fps=info.fps, n_frames=info.n_frames, codec=info.codec)
        except MediaError as e:
            row.update(reason=e.reason, detail=e.detail)
        except Exception as e:  # noqa: BLE001 - an unexpected decoder failure refuses the file, not the run
            row.update(reason="probe_failed", detail=f"{type(e).__name__}: {e}")
        rows.append(row)
    return rows


def _probe_batch(batch: dict):
    """Ray Data UDF: a batch of (path, kind) in, a typed Arrow table of probe rows out."""
    import pyarrow as pa

    schema = pa.schema([(name, getattr(pa, typ)()) for name, typ in _PROBE_SCHEMA])
    return pa.Table.from_pylist(_probe_rows(batch), schema=schema)


def probe_media(media: Sequence[MediaKey], *, ray_settings: RaySettings | None = None, workers: int | None = None,
                batch_size: int = 32) -> dict[MediaKey, dict]:
    """Hash and probe files on Ray Data; returns (path, kind) -> result row (``reason`` set on failure).

    ``workers``: at most this many concurrent Ray tasks (None: as many as Ray has CPUs);
    0 probes in this process without Ray (a few files, where starting Ray costs more than the work).
    """
    if not media:
        return {}
    with progress.task("hash + probe media", total=len(media)) as bar:
        return _probe_in_process(media, bar) if workers == 0 else _probe_on_ray(media, ray_settings, workers,
                                                                                 batch_size, bar)


def _probe_in_process(media: Sequence[MediaKey], bar: progress.Task) -> dict[MediaKey, dict]:
    results = {}
    for key in media:
        results[key] = _probe_rows({"path": [key[0]], "kind": [key[1]]})[0]
        bar.advance()
    return results


def _probe_on_ray(media: Sequence[MediaKey], ray_settings: RaySettings | None, workers: int | None,
                  batch_size: int, bar: progress.Task) -> dict[MediaKey, dict]:
    import ray

    from core.ray_runtime import ensure_ray

    ensure_ray(ray_settings)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    parallel = workers or int(ray.cluster_resources().get("CPU", 1))
    # Blocks of about 4 full batches (one task each: results stream back as blocks finish and the task overhead
    # stays small), and at least 4 blocks per worker so none idles at the end.
    batches = -(-len(media) // batch_size)
    n_blocks = max(1, min(batches, max(4 * parallel, batches // 4)))
    ds = ray.data.from_items([{"path": p, "kind": k} for p, k in media], override_num_blocks=n_blocks)
    ds = ds.map_batches(_probe_batch, batch_size=batch_size, num_cpus=1,
                        concurrency=min(workers, n_blocks) if workers else None)
    results: dict[MediaKey, dict] = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):  # whole blocks: little driver CPU
        rows = batch.to_pylist()
        results.update(((row["path"], row["kind"]), row) for row in rows)
        bar.advance(len(rows))
    return results


# -- staging: the items of a source, read once, as Parquet row groups ---------------------------------
_STAGED_SCHEMA = [("row", "int64"), ("item", "string"), ("conversation", "string"), ("paths", "list<string>"),
                  ("kinds", "list<string>"), ("reason", "string"), ("detail", "string")]


@dataclass
class StagedSource:
    """A source's items as read, in a Parquet file (not in memory), and the distinct media they cite."""

    manifest: SourceManifest
    path: Path
    items: int
    media: dict[MediaKey, None]  # insertion-ordered set: one entry per distinct file, not per item


def stage_items(manifest: SourceManifest, media_store: Path, path: Path, batch_rows: int | None = None
                ) -> StagedSource:
    """Read a source's items (:func:`curation.sources.iter_items`) into ``path``, ``batch_rows`` (default
    :data:`STAGE_BATCH_ROWS`) per row group; conversations as canonical JSON (the text :func:`content_sha256`
    hashes). Memory: one batch plus the distinct media paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    batch_rows = batch_rows or STAGE_BATCH_ROWS
    schema = pa.schema([(name, pa.list_(pa.string()) if typ == "list<string>" else getattr(pa, typ)())
                        for name, typ in _STAGED_SCHEMA])
    media: dict[MediaKey, None] = {}
    cols: dict[str, list] = {name: [] for name, _ in _STAGED_SCHEMA}
    n = 0
    with pq.ParquetWriter(path, schema) as writer:
        def flush() -> None:
            writer.write_table(pa.table(cols, schema=schema))
            for c in cols.values():
                c.clear()

        for it in iter_items(manifest, media_store):
            cols["row"].append(n)
            cols["item"].append(it.item)
            cols["conversation"].append(None if it.conversation is None else _canonical(it.conversation))
            cols["paths"].append([p for p, _ in it.media])
            cols["kinds"].append([k for _, k in it.media])
            cols["reason"].append(it.reason)
            cols["detail"].append(it.detail)
            if it.reason is None:
                for key in it.media:
                    media[key] = None
            n += 1
            if len(cols["row"]) >= batch_rows:
                flush()
        flush()
    return StagedSource(manifest, path, n, media)


STAGE_PARALLEL_BYTES = 32 << 20
"""Annotation bytes from which sources are read in worker processes, one source per process: a process costs
about a second of imports, repaid beyond roughly 100,000 items (32 MiB of LLaVA-style JSON)."""


def stage_sources(manifests: Sequence[SourceManifest], media_store: Path, folder: Path,
                  processes: int | None = None) -> list[StagedSource]:
    """Every source staged (:func:`stage_items`) into ``folder/<i>.parquet``, in order. Reading annotations is
    Python work on one core per source, so sources are read side by side in ``processes`` worker processes
    (default: one per CPU, up to one per source, once the annotations reach :data:`STAGE_PARALLEL_BYTES`;
    1: all in this process). The staged files are the same either way; one huge source stays on one core."""
    jobs = [(m, media_store, folder / f"{i}.parquet") for i, m in enumerate(manifests)]
    if processes is None:
        size = sum(p.stat().st_size for m in manifests for p in m.annotation_paths if p.is_file())
        processes = min(len(jobs), os.cpu_count() or 1) if size >= STAGE_PARALLEL_BYTES else 1
    if processes <= 1 or len(jobs) <= 1:
        return [stage_items(*job) for job in jobs]
    context = multiprocessing.get_context("forkserver")  # not a fork of a driver that may run Ray or Prefect
    with concurrent.futures.ProcessPoolExecutor(min(processes, len(jobs)), mp_context=context) as pool:
        return list(pool.map(stage_items, *zip(*jobs)))


def _canonical(conversation: list[dict]) -> str:
    return json.dumps(conversation, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


_CONTENT_SHA256_SQL = """sha256('{"conversation":' || i.conversation || ',"media":'
                                || CAST(to_json(i.media_hashes) AS VARCHAR) || '}')"""
""":func:`content_sha256` in SQL, over the canonical conversation text and the hash list (hex strings need no
escaping, so DuckDB's compact JSON of the list is the text Python writes; a test holds the two equal)."""

_ITEMS_SQL = """
CREATE TEMP TABLE _ingest_items AS
WITH rd AS (
    SELECT row, item, conversation, paths, kinds, reason, detail,
           row_number() OVER (PARTITION BY item ORDER BY row) AS occurrence
    FROM read_parquet($staged)
),
cited AS (  -- every medium of every readable item, with its probe result
    SELECT u.row, u.i, u.path, p.media_hash, p.reason AS probe_reason, p.detail AS probe_detail
    FROM (SELECT row, unnest(paths) AS path, unnest(kinds) AS kind, generate_subscripts(paths, 1) AS i
          FROM rd WHERE reason IS NULL AND occurrence = 1) u
    JOIN _ingest_probed p ON p.path = u.path AND p.kind = u.kind
),
per_item AS (
    SELECT row,
           list(media_hash ORDER BY i) AS media_hashes,
           min(i) FILTER (WHERE probe_reason IS NOT NULL) AS bad_i,
           arg_min(probe_reason, i) FILTER (WHERE probe_reason IS NOT NULL) AS probe_reason,
           arg_min(path || ': ' || probe_detail, i) FILTER (WHERE probe_reason IS NOT NULL) AS probe_detail
    FROM cited GROUP BY row
)
SELECT r.row,
       CASE WHEN r.occurrence > 1 THEN r.item || '#' || r.occurrence ELSE r.item END AS item,
       r.conversation,
       coalesce(m.media_hashes, []::TEXT[]) AS media_hashes,
       m.bad_i,
       CASE WHEN r.occurrence > 1 THEN 'duplicate_item' ELSE coalesce(r.reason, m.probe_reason) END AS reason,
       CASE WHEN r.occurrence > 1 THEN 'item id ''' || r.item || ''' occurs ' || r.occurrence || ' times'
            ELSE coalesce(r.detail, m.probe_detail) END AS detail
FROM rd r LEFT JOIN per_item m USING (row)
"""
"""One row per staged item: its id (a repeated id numbered ``<id>#<n>`` and refused as ``duplicate_item``, the
first occurrence kept), media hashes in placeholder order, and the refusal reason: the reader's, else the first
medium's that failed to probe (``bad_i``: its position)."""


def _probed_table(staged: StagedSource, probed: dict[MediaKey, dict], catalog: Catalog):
    """The probe rows of the source's media as an Arrow table (``storage_path`` as the catalog stores it)."""
    import pyarrow as pa

    rows = [probed[key] for key in staged.media]
    table = pa.Table.from_pylist(rows, schema=pa.schema([(name, getattr(pa, typ)()) for name, typ in _PROBE_SCHEMA]))
    return table.append_column("storage_path", pa.array([catalog.stored(r["path"]) for r in rows], pa.string()))


def _source_row(m: SourceManifest) -> dict:
    return {"name": m.name, "modality": m.modality, "task": m.task, "format": m.format,
            "path": str(m.resolve(m.path)), "media_root": str(m.media_dir), "license": m.license, "notes": m.notes,
            "manifest_path": str(m.manifest_path) if m.manifest_path else None,
            "manifest_sha256": m.manifest_sha256()}


def write_source(catalog: Catalog, staged: StagedSource, probed: dict[MediaKey, dict],
                 run_id: str | None) -> SourceReport:
    """Turn one source's staged items + probe results into rows and write them in one transaction, in SQL
    (DuckDB reads the staged Parquet; no row of the source becomes a Python object)."""
    manifest = staged.manifest
    report = SourceReport(manifest.name, items=staged.items)
    params = {"source": manifest.name, "stage": STAGE, "run_id": run_id, "task": manifest.task,
              "hints": list(manifest.stage_hints)}

    def run(sql: str, *names: str):
        return con.execute(sql, {k: params[k] for k in names})

    with catalog.transaction() as con:
        con.register("_ingest_probed", _probed_table(staged, probed, catalog))
        con.execute(_ITEMS_SQL, {"staged": str(staged.path)})
        run(f"""
            CREATE TEMP TABLE _ingest_ok AS
            SELECT $source || '/' || i.item AS sample_id, i.item, i.conversation, i.media_hashes,
                   {_CONTENT_SHA256_SQL} AS content_sha256,
                   CASE WHEN e.sample_id IS NULL THEN 'new'
                        WHEN e.content_sha256 = {_CONTENT_SHA256_SQL} AND e.task = $task
                             AND e.stage_hints IS NOT DISTINCT FROM $hints THEN 'unchanged'
                        ELSE 'replaced' END AS status
            FROM _ingest_items i LEFT JOIN samples e ON e.sample_id = $source || '/' || i.item
            WHERE i.reason IS NULL""", "source", "task", "hints")
        counts = dict(con.execute("SELECT status, count(*) FROM _ingest_ok GROUP BY status").fetchall())
        report.new, report.replaced, report.unchanged = (counts.get(k, 0) for k in ("new", "replaced", "unchanged"))
        report.stale = run("SELECT count(*) FROM samples s WHERE s.source = $source AND NOT EXISTS "
                           "(SELECT 1 FROM _ingest_ok o WHERE o.sample_id = s.sample_id)", "source").fetchone()[0]
        report.quarantined.update(dict(con.execute(
            "SELECT reason, count(*) FROM _ingest_items WHERE reason IS NOT NULL GROUP BY reason").fetchall()))
        catalog.insert("sources", [{**_source_row(manifest), "run_id": run_id}], on_conflict="replace", con=con)
        # Media new to the catalog that readable items cite before their first medium that failed to probe.
        report.new_media = run("""
            INSERT INTO media (media_hash, kind, bytes, width, height, duration_s, fps, n_frames, codec,
                               storage_path, run_id)
            SELECT p.media_hash, p.kind, p.bytes, p.width, p.height, p.duration_s, p.fps, p.n_frames, p.codec,
                   p.storage_path, $run_id
            FROM _ingest_probed p
            WHERE p.media_hash IN (SELECT unnest(media_hashes[1:coalesce(bad_i, len(media_hashes) + 1) - 1])
                                   FROM _ingest_items WHERE reason IS NULL OR bad_i IS NOT NULL)
              AND p.media_hash NOT IN (SELECT media_hash FROM media)
            QUALIFY row_number() OVER (PARTITION BY p.media_hash ORDER BY p.path) = 1""", "run_id").fetchone()[0]
        for status, verb in (("new", "INSERT"), ("replaced", "INSERT OR REPLACE")):
            run(f"""
                {verb} INTO samples (sample_id, source, item, task, conversation, media_hashes, stage_hints,
                                     content_sha256, run_id)
                SELECT sample_id, $source, item, $task, conversation, media_hashes, $hints, content_sha256, $run_id
                FROM _ingest_ok WHERE status = '{status}'""", "source", "task", "hints", "run_id")
        # Refusals mirror the source as read now: a fixed item loses its old refusal, a still-bad one keeps its row.
        run("""DELETE FROM quarantine q WHERE q.source = $source AND q.stage = $stage AND NOT EXISTS (
                   SELECT 1 FROM _ingest_items i WHERE i.item = q.item AND i.reason = q.reason)""", "source", "stage")
        run("""INSERT OR IGNORE INTO quarantine (source, item, reason, detail, stage, run_id)
               SELECT $source, item, reason, detail, $stage, $run_id FROM _ingest_items WHERE reason IS NOT NULL""",
            "source", "stage", "run_id")
        con.execute("DROP TABLE _ingest_items")
        con.execute("DROP TABLE _ingest_ok")
        con.unregister("_ingest_probed")  # temp tables and registrations of a failed write go with its rollback
    return report


def ingest(manifests: Sequence[SourceManifest], catalog: Catalog, *, media_store: Path | None = None,
           ray_settings: RaySettings | None = None, workers: int | None = None,
           run_id: str | None = None, stage_processes: int | None = None) -> list[SourceReport]:
    """Ingest sources (in order) into ``catalog``; returns one report per source.

    ``media_store``: where media packed in tars are extracted, content-addressed
    (default ``<catalog folder>/media``), so every ``media.storage_path`` is a plain file.
    ``run_id``: the caller's run (``mavors ingest``, the curate flow), stored with the rows it writes.
    ``stage_processes``: processes reading annotations, one source each (:func:`stage_sources`; None: by size).
    Items are staged in Parquet files in a temporary folder, so memory does not grow with the sources.
    """
    media_store = media_store or catalog.path.parent / "media"
    with tempfile.TemporaryDirectory(prefix="mavors-ingest-") as tmp:
        staged = stage_sources(manifests, media_store, Path(tmp), stage_processes)
        wanted = list(dict.fromkeys(k for s in staged for k in s.media))
        probed = probe_media(wanted, ray_settings=ray_settings, workers=workers)
        return [write_source(catalog, s, probed, run_id) for s in staged]
