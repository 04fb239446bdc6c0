"""Ingest sources into the catalog: read annotations, hash and probe media on Ray Data, write one transaction per source.

    mavors ingest manifests/sources/demo/*.yaml          # or, from Python:
    python -c "from curation.ingest import ingest; ..."

Steps, per call:
1. the driver reads every source's annotations into items (bad lines/items refused with a reason);
2. the distinct media files of all sources are hashed (streaming sha256) and probed (Pillow / PyAV)
   by Ray Data tasks, which return rows and never touch the catalog (DuckDB has one writer);
3. for each source, the driver writes ``sources``, ``media``, ``samples`` and ``quarantine`` rows in
   ONE transaction, so a crash leaves a source either fully ingested or untouched.

Re-ingesting adds nothing: media rows are keyed by content hash (the same bytes reached from two
sources are one row), samples by ``<source>/<item>``; an item whose content hash changed replaces
its row; refusals are keyed by (source, item, stage, reason) and a refusal whose item is now good
(or gone) is removed. Samples whose item disappeared from the source are kept (captions, scores and
mixtures cite them) and counted as ``stale``.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core import progress
from core.catalog import Catalog
from curation.media import hash_and_probe
from core.settings import RaySettings
from curation.sources import RawItem, SourceManifest, iter_items
from model.preprocessing import MediaError

STAGE = "ingest"

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


def _media_row(r: dict) -> dict:
    return {"media_hash": r["media_hash"], "kind": r["kind"], "bytes": int(r["bytes"]), "width": int(r["width"]),
            "height": int(r["height"]), "duration_s": r["duration_s"], "fps": r["fps"],
            "n_frames": int(r["n_frames"]), "codec": r["codec"], "storage_path": r["path"]}


def _source_row(m: SourceManifest) -> dict:
    return {"name": m.name, "modality": m.modality, "task": m.task, "format": m.format,
            "path": str(m.resolve(m.path)), "media_root": str(m.media_dir), "license": m.license, "notes": m.notes,
            "manifest_path": str(m.manifest_path) if m.manifest_path else None,
            "manifest_sha256": m.manifest_sha256()}


def write_source(catalog: Catalog, manifest: SourceManifest, items: list[RawItem],
                 probed: dict[MediaKey, dict], run_id: str | None) -> SourceReport:
    """Turn one source's items + probe results into rows and write them in one transaction."""
    report = SourceReport(manifest.name, items=len(items))
    samples, refused, media = [], [], {}
    for it in items:
        reason, detail = it.reason, it.detail
        hashes = []
        for key in it.media if reason is None else []:
            r = probed[key]
            if r["reason"]:
                reason, detail = r["reason"], f"{key[0]}: {r['detail']}"
                break
            hashes.append(r["media_hash"])
            media.setdefault(r["media_hash"], {**_media_row(r), "run_id": run_id})
        if reason:
            refused.append({"source": manifest.name, "item": it.item, "reason": reason, "detail": detail,
                            "stage": STAGE, "run_id": run_id})
            report.quarantined[reason] += 1
            continue
        samples.append({"sample_id": f"{manifest.name}/{it.item}", "source": manifest.name, "item": it.item,
                        "task": manifest.task, "conversation": it.conversation, "media_hashes": hashes,
                        "stage_hints": list(manifest.stage_hints),
                        "content_sha256": content_sha256(it.conversation, hashes), "run_id": run_id})

    with catalog.transaction() as con:
        # What a row says beyond its content: a manifest edit (task, stage hints) also rewrites the row.
        existing = {sid: (h, task, hints) for sid, h, task, hints in con.execute(
            "SELECT sample_id, content_sha256, task, stage_hints FROM samples WHERE source = ?",
            [manifest.name]).fetchall()}
        known_media = {h for (h,) in con.execute(
            "SELECT media_hash FROM media WHERE media_hash IN (SELECT unnest(?::TEXT[]))", [list(media)]).fetchall()}
        new = [s for s in samples if s["sample_id"] not in existing]
        changed = [s for s in samples if s["sample_id"] in existing and existing[s["sample_id"]] != (
            s["content_sha256"], s["task"], s["stage_hints"])]
        report.new, report.replaced = len(new), len(changed)
        report.unchanged = len(samples) - len(new) - len(changed)
        report.new_media = len(set(media) - known_media)
        catalog.insert("sources", [{**_source_row(manifest), "run_id": run_id}], on_conflict="replace", con=con)
        catalog.insert("media", [media[h] for h in media if h not in known_media], con=con)
        catalog.insert("samples", new, con=con)
        catalog.insert("samples", changed, on_conflict="replace", con=con)
        # Refusals mirror the source as read now: a fixed item loses its old refusal, a still-bad one keeps its row.
        now = {(r["item"], r["reason"]) for r in refused}
        before = con.execute("SELECT item, reason FROM quarantine WHERE source = ? AND stage = ?",
                             [manifest.name, STAGE]).fetchall()
        gone = [[manifest.name, STAGE, item, reason] for item, reason in before if (item, reason) not in now]
        if gone:
            con.executemany("DELETE FROM quarantine WHERE source = ? AND stage = ? AND item = ? AND reason = ?", gone)
        catalog.quarantine(refused, con=con)
        report.stale = len(set(existing) - {s["sample_id"] for s in samples})
    return report


def ingest(manifests: Sequence[SourceManifest], catalog: Catalog, *, media_store: Path | None = None,
           ray_settings: RaySettings | None = None, workers: int | None = None,
           run_id: str | None = None) -> list[SourceReport]:
    """Ingest sources (in order) into ``catalog``; returns one report per source.

    ``media_store``: where media packed in tars are extracted, content-addressed
    (default ``<catalog folder>/media``), so every ``media.storage_path`` is a plain file.
    ``run_id``: the caller's run (``mavors ingest``, the curate flow), stored with the rows it writes.
    """
    media_store = media_store or catalog.path.parent / "media"
    read = [(m, list(iter_items(m, media_store))) for m in manifests]
    wanted = list(dict.fromkeys(k for _, items in read for it in items if it.reason is None for k in it.media))
    probed = probe_media(wanted, ray_settings=ray_settings, workers=workers)
    return [write_source(catalog, m, items, probed, run_id) for m, items in read]
