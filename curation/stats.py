"""Catalog statistics as sections: each is a function ``(Catalog) -> Section | None``.

``mavors catalog stats`` renders every section in :data:`SECTIONS`. An area adds its
own by appending ``"module:function"`` to that list (one line, imported lazily); a
section returns None when its tables are absent or empty, so the list can grow
before every schema file exists.

    mavors catalog stats
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.catalog import Catalog


@dataclass
class Section:
    """A titled table of plain values (rendered with rich by the CLI, compared as data in tests)."""

    title: str
    columns: list[str]
    rows: list[list[Any]]


def has_table(cat: Catalog, name: str) -> bool:
    return bool(cat.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]))


def sources_section(cat: Catalog) -> Section | None:
    """Per source: samples, distinct media, refused items."""
    rows = cat.con.execute("""
        SELECT s.name, s.format, s.modality, s.task,
               (SELECT count(*) FROM samples x WHERE x.source = s.name),
               (SELECT count(DISTINCT h) FROM (SELECT unnest(media_hashes) AS h FROM samples x WHERE x.source = s.name)),
               (SELECT count(*) FROM quarantine q WHERE q.source = s.name AND q.stage = 'ingest')
        FROM sources s ORDER BY s.name""").fetchall()
    if not rows:
        return None
    return Section("Sources", ["source", "format", "modality", "task", "samples", "media", "quarantined"],
                   [list(r) for r in rows])


def media_section(cat: Catalog) -> Section | None:
    """Media by kind: files, bytes, total video hours."""
    rows = cat.con.execute("""
        SELECT kind, count(*), sum(bytes), round(sum(coalesce(duration_s, 0)) / 3600, 4),
               min(width) || 'x' || min(height) || ' .. ' || max(width) || 'x' || max(height)
        FROM media GROUP BY kind ORDER BY kind""").fetchall()
    if not rows:
        return None
    return Section("Media", ["kind", "files", "bytes", "hours", "size range"], [list(r) for r in rows])


def duplicates_section(cat: Catalog) -> Section | None:
    """Media hashes used by more than one sample: how many groups, and across which sources."""
    rows = cat.con.execute("""
        WITH uses AS (SELECT DISTINCT unnest(media_hashes) AS h, sample_id, source FROM samples),
             groups AS (SELECT h, count(DISTINCT sample_id) AS n, count(DISTINCT source) AS n_src,
                               string_agg(DISTINCT source, ', ' ORDER BY source) AS srcs
                        FROM uses GROUP BY h HAVING count(DISTINCT sample_id) > 1)
        SELECT srcs, count(*), sum(n), max(n) FROM groups GROUP BY srcs ORDER BY srcs""").fetchall()
    if not rows:
        return None
    return Section("Duplicate media (same sha256 in several samples)",
                   ["sources", "groups", "samples", "largest group"], [list(r) for r in rows])


def quarantine_section(cat: Catalog) -> Section | None:
    """Refused items by stage and reason."""
    rows = cat.con.execute(
        "SELECT stage, reason, count(*), count(DISTINCT source) FROM quarantine GROUP BY ALL ORDER BY 1, 3 DESC, 2"
    ).fetchall()
    if not rows:
        return None
    return Section("Quarantine", ["stage", "reason", "items", "sources"], [list(r) for r in rows])


# Rendered in this order; areas append "module:function" (see module docstring).
SECTIONS: list[str] = [
    "curation.stats:sources_section",
    "curation.stats:media_section",
    "curation.stats:duplicates_section",
    "curation.stats:quarantine_section",
    "curation.preference.stats:dpo_section",
]


def load_section(spec: str) -> Callable[[Catalog], Section | None]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def collect(cat: Catalog, sections: list[str] | None = None) -> list[Section]:
    """Every non-empty section, in order."""
    out = []
    for spec in sections or SECTIONS:
        section = load_section(spec)(cat)
        if section is not None:
            out.append(section)
    return out
