"""The quarantine table read and cleared: what each step refused, and a retry after the cause is fixed.

    mavors quarantine list --stage shards
    mavors quarantine retry --stage shards --reason undecodable_video     # clear, then rebuild the mixtures

Steps record refused items (``Catalog.quarantine``) and leave them out from then on: a sample with any
quarantine row is not drawn into mixtures nor written to shards. Only re-ingest clears rows (its own,
stage ``ingest``); once a medium is repaired or a step fixed, :func:`clear_quarantine` removes a
stage's rows (optionally one reason) so that the step's next run takes those items again, and
:func:`mixtures_to_rebuild` names the mixtures whose shard build a cleared ``shards`` row concerns.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from curation.mixtures import MixtureConfig

if TYPE_CHECKING:
    from core.catalog import Catalog

COLUMNS = ("stage", "reason", "source", "item", "detail", "run_id", "created_at")
"""The columns :func:`quarantined` returns, in the order a table shows them."""


def _where(stage: str | None, reason: str | None) -> tuple[str, list[Any]]:
    conds, params = [], []
    for column, value in (("stage", stage), ("reason", reason)):
        if value is not None:
            conds.append(f"{column} = ?")
            params.append(value)
    return (" WHERE " + " AND ".join(conds)) if conds else "", params


def quarantined(cat: Catalog, *, stage: str | None = None, reason: str | None = None) -> list[dict[str, Any]]:
    """Quarantine rows (:data:`COLUMNS`), of one stage and/or reason when given, ordered by stage, reason, item."""
    where, params = _where(stage, reason)
    return cat.query(f"SELECT {', '.join(COLUMNS)} FROM quarantine{where} ORDER BY stage, reason, source, item",
                     params)


def clear_quarantine(cat: Catalog, stage: str, *, reason: str | None = None) -> list[dict[str, Any]]:
    """Delete the stage's rows (only ``reason``'s when given) in one transaction; returns the rows removed.

    The items are then eligible again: the stage's next run retries them and records a new row for any
    that still fail."""
    where, params = _where(stage, reason)
    with cat.transaction() as con:
        rows = quarantined(cat, stage=stage, reason=reason)
        con.execute(f"DELETE FROM quarantine{where}", params)
    return rows


def mixtures_to_rebuild(cat: Catalog, rows: list[dict[str, Any]]) -> list[MixtureConfig]:
    """The selected mixtures (their configs as selected) that drew any of these rows' (source, item)
    samples, by name: the shard builds to redo after their ``shards`` rows are cleared."""
    if not rows:
        return []
    keys = sorted({f"{r['source']}\0{r['item']}" for r in rows})
    found = cat.query(
        """SELECT name, config FROM mixtures WHERE name IN (
               SELECT mm.mixture FROM mixture_members mm JOIN samples s USING (sample_id)
               WHERE list_contains(?, s.source || chr(0) || s.item))
           ORDER BY name""", [keys])
    return [MixtureConfig.model_validate(json.loads(r["config"]) if isinstance(r["config"], str) else r["config"])
            for r in found]
