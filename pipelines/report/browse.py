"""Browsing the catalog: any read-only SQL, what a table or view holds, everything about one sample.

    mavors catalog query "SELECT source, count(*) FROM training_set GROUP BY source"
    mavors catalog describe sample_overview
    mavors catalog show demo_llava/q0

The documented views (``training_set``, ``sample_overview``, ``dedup_groups``) and every column's comment
come from the schema files (``manifests/schema/0020_views.sql``, ``0021_comments.sql``).
"""
from __future__ import annotations

import json
from typing import Any

from core.catalog import Catalog
from pipelines.report.sections import Section, Table


def run_query(cat: Catalog, sql: str, limit: int | None = None) -> tuple[list[str], list[list[Any]], bool]:
    """Columns, up to ``limit`` rows (``None``: all) and whether more rows were left out."""
    with cat.connection() as con:  # one connection for the cursor: only the rows shown are fetched
        cur = con.execute(sql)
        if cur.description is None:  # a statement that returns nothing (only reachable on a writable catalog)
            return [], [], False
        columns = [d[0] for d in cur.description]
        rows = cur.fetchall() if limit is None else cur.fetchmany(limit + 1)
    more = limit is not None and len(rows) > limit
    return columns, [list(r) for r in rows[:limit]], more


def relations(cat: Catalog) -> list[list[Any]]:
    """Every table and view: name, kind, rows (tables: DuckDB's estimate), comment."""
    tables = cat.con.execute("""
        SELECT table_name, 'table', estimated_size, comment FROM duckdb_tables() WHERE NOT internal
        UNION ALL
        SELECT view_name, 'view', NULL, comment FROM duckdb_views() WHERE NOT internal AND schema_name = 'main'
        ORDER BY 2, 1""").fetchall()
    return [list(r) for r in tables]


def describe(cat: Catalog, name: str) -> tuple[str, Table]:
    """The comment of table or view ``name`` and its columns (name, type, nullable, comment)."""
    found = cat.con.execute("""
        SELECT comment FROM duckdb_tables() WHERE table_name = $n AND NOT internal
        UNION ALL SELECT comment FROM duckdb_views() WHERE view_name = $n AND NOT internal""", {"n": name}).fetchall()
    if not found:
        known = ", ".join(r[0] for r in relations(cat))
        raise KeyError(f"no table or view {name!r} in the catalog {cat.path} (there are: {known})")
    rows = cat.con.execute("""
        SELECT column_name, data_type, is_nullable, comment FROM duckdb_columns()
        WHERE table_name = ? AND NOT internal ORDER BY column_index""", [name]).fetchall()
    return found[0][0] or "", (["column", "type", "nullable", "comment"], [list(r) for r in rows])


def _rows(cat: Catalog, sql: str, params: list[Any]) -> list[list[Any]]:
    return [list(r) for r in cat.con.execute(sql, params).fetchall()]


def sample_card(cat: Catalog, sample_id: str) -> list[Section]:
    """Everything the catalog holds about one sample, a section per step (empty steps say so).

    A sample refused at ingest has no ``samples`` row: its card is its quarantine records. An id the catalog
    has never seen is a ``KeyError`` naming it and, when some exist, ids that contain it.
    """
    sample = cat.con.execute("SELECT source, item, task, conversation, media_hashes FROM samples WHERE sample_id = ?",
                             [sample_id]).fetchone()
    source, _, item = sample_id.partition("/")
    if sample is not None:
        source, item = sample[0], sample[1]
    refused = Section("Quarantine", note="never refused")
    refused.tables.append((["stage", "reason", "detail", "run"], _rows(cat, """
        SELECT stage, reason, detail, run_id FROM quarantine WHERE source = ? AND item = ?
        ORDER BY created_at, stage, reason""", [source, item])))
    if sample is None:
        if refused.has_data:
            refused.note = f"{sample_id} was refused before it became a sample"
            return [refused]
        like = [r[0] for r in cat.con.execute(
            "SELECT sample_id FROM samples WHERE contains(sample_id, ?) ORDER BY sample_id LIMIT 5", [sample_id]).fetchall()]
        hint = f" (did you mean {', '.join(like)}?)" if like else ""
        raise KeyError(f"sample {sample_id!r} is not in the catalog {cat.path}{hint}")
    media_hashes = list(sample[4])
    sections = [_sample(cat, sample_id, sample), _media(cat, media_hashes), _captions(cat, sample_id, media_hashes)]
    sections += [_simple(cat, title, note, columns, sql, [sample_id]) for title, note, columns, sql in _STEP_TABLES]
    return sections + [refused]


def _sample(cat: Catalog, sample_id: str, sample: tuple) -> Section:
    source, item, task, conversation, _ = sample
    sec = Section(f"Sample {sample_id}")
    src = cat.con.execute("SELECT format, path, license FROM sources WHERE name = ?", [source]).fetchone()
    sec.tables.append((["source", "item", "task", "format", "source path", "license"],
                       [[source, item, task, *(src or (None, None, None))]]))
    turns = json.loads(conversation) if isinstance(conversation, str) else conversation
    sec.tables.append((["turn", "from", "value"], [[i, t.get("from"), t.get("value")] for i, t in enumerate(turns)]))
    return sec


def _media(cat: Catalog, media_hashes: list[str]) -> Section:
    sec = Section("Media", note="no media (a text-only sample)")
    rows = []
    for position, h in enumerate(media_hashes):
        row = cat.con.execute("""
            SELECT kind, width || 'x' || height, duration_s, fps, n_frames, codec, storage_path,
                   (SELECT string_agg(path, ', ' ORDER BY profile) FROM shard_media sm WHERE sm.media_hash = m.media_hash)
            FROM media m WHERE media_hash = ?""", [h]).fetchone()
        rows.append([position, h, *(row or ("(not in media)",) + (None,) * 7)])
    sec.tables.append((["#", "media_hash", "kind", "size", "duration_s", "fps", "frames", "codec", "stored at",
                        "prepared for shards"], rows))
    return sec


def _captions(cat: Catalog, sample_id: str, media_hashes: list[str]) -> Section:
    """Raw captions of the sample's media per captioner, the merged caption with the merger's reasoning, and
    (for a synthetic caption sample) the sample it was made from."""
    sec = Section("Captions", note="no synthetic captions of this sample's media")
    sec.tables.append((["media_hash", "captioner", "status", "reject reason", "finish", "tokens", "text"], _rows(cat, """
        SELECT media_hash, captioner, status, reject_reason, finish_reason, n_tokens, text FROM captions
        WHERE list_contains(?, media_hash) ORDER BY media_hash, captioner, created_at""", [media_hashes])))
    sec.tables.append((["media_hash", "merger", "status", "reject reason", "merged caption", "reasoning"], _rows(cat, """
        SELECT media_hash, merger, status, reject_reason, text, reasoning FROM merged_captions
        WHERE list_contains(?, media_hash) ORDER BY media_hash, merger, created_at""", [media_hashes])))
    sec.tables.append((["made from sample", "merge_id"], _rows(cat, """
        SELECT from_sample, merge_id FROM caption_samples WHERE sample_id = ?""", [sample_id])))
    return sec


_STEP_TABLES: list[tuple[str, str, list[str], str]] = [
    ("Perplexity", "not scored", ["scorer", "template", "scope", "ppl", "tokens", "backend", "run"], """
        SELECT scorer, template_version, text_scope, round(ppl, 4), n_tokens, backend, run_id FROM ppl_scores
        WHERE sample_id = ? ORDER BY created_at, scorer"""),
    ("Dedup", "no dedup verdict yet", ["policy", "kept", "reason", "rule", "k", "rank", "ppl", "group size",
                                       "grouping", "group_key"], """
        SELECT policy, kept, reason, rule, k, rank, round(ppl, 4), group_size, grouping, group_key
        FROM dedup_decisions WHERE sample_id = ? ORDER BY created_at, policy"""),
    ("Held out", "not held out", ["family", "split", "seed"], """
        SELECT DISTINCT family, split, seed FROM heldout WHERE sample_id = ? ORDER BY split"""),
    ("Mixtures and shards", "in no mixture", ["mixture", "stage", "entry", "dedup policy", "dedup reason",
                                              "shard", "shard path"], """
        SELECT mm.mixture, mm.stage, mm.entry, mm.dedup_policy, mm.dedup_reason, mm.shard, sh.path
        FROM mixture_members mm
        LEFT JOIN shards sh ON sh.mixture = mm.mixture AND sh.stage = mm.stage AND sh.name = mm.shard
        WHERE mm.sample_id = ? ORDER BY mm.mixture, mm.stage"""),
    ("DPO", "not a DPO input", ["pair set", "domain", "pairs", "reason", "detail"], """
        SELECT pair_set_id, domain, n_pairs, reason, detail FROM dpo_inputs
        WHERE sample_id = ? ORDER BY created_at, pair_set_id"""),
    ("DPO pairs", "no DPO pairs", ["pair_id", "chosen", "rejected", "margin", "chosen reason", "rejected reason",
                                   "shard folder"], """
        SELECT p.pair_id, p.chosen, p.rejected, round(p.margin, 4), p.chosen_reason, p.rejected_reason, s.shard_dir
        FROM dpo_pairs p LEFT JOIN dpo_pair_sets s USING (pair_set_id)
        WHERE p.sample_id = ? ORDER BY p.created_at, p.pair_id"""),
]
"""(title, note when empty, columns, SQL with the sample id as its one parameter) of the one-table steps."""


def _simple(cat: Catalog, title: str, note: str, columns: list[str], sql: str, params: list[Any]) -> Section:
    sec = Section(title, note=note)
    sec.tables.append((columns, _rows(cat, sql, params)))
    return sec
