"""Catalog rows for trained stages (table ``train_stages``, schema 0006); written by the driver only.

    record_stage(catalog, run_dir, stage_record, run_id)
"""
from __future__ import annotations

import datetime as dt


def _ts(value) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(value, dt.UTC).replace(tzinfo=None) if value else None


def stage_row(run_dir: str, record: dict, run_id: str | None = None) -> dict:
    """The ``train_stages`` row of a stage record (``export/stage.json`` plus ``export``)."""
    init = record["spec"]["init"]
    return {
        "run_dir": str(run_dir), "stage": record["stage"], "spec_path": record.get("source"),
        "spec_sha256": record["spec_digest"], "spec": record["spec"],
        "init_from": init.get("from_stage") or init.get("pretrained") or "components",
        "export_path": record["export"], "world_size": record["world_size"], "steps": record["steps"],
        "samples": record["samples"], "final_loss": record.get("final_loss"),
        "resumed_from_step": record.get("resumed_from_step"), "init_fingerprints": record.get("init_fingerprints"),
        "fingerprints": record.get("fingerprints"), "started_at": _ts(record.get("started_at")),
        "ended_at": _ts(record.get("ended_at")), "run_id": run_id,
    }


def record_stage(catalog, run_dir: str, record: dict, run_id: str | None = None) -> None:
    """Insert the stage's row in one transaction; a stage already recorded keeps its row."""
    with catalog.transaction() as con:
        catalog.insert("train_stages", [stage_row(run_dir, record, run_id)], on_conflict="ignore", con=con)
