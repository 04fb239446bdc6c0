"""The report finds its input files from any working directory, and says so where one is missing.

    pytest tests/pipelines/report/test_report_inputs.py -q
"""
from __future__ import annotations

import json

from core.catalog import Catalog
from pipelines.report.html import write_report


def _stage(cat: Catalog, run_dir, stage: str, run_id: str) -> None:
    cat.insert("train_stages", [{"run_id": run_id,
        "run_dir": str(run_dir), "stage": stage, "spec_sha256": "h", "spec": {}, "init_from": "components",
        "export_path": str(run_dir / stage / "export"), "world_size": 1, "steps": 2, "samples": 4, "final_loss": 1.0}])


def test_metrics_are_found_after_a_move_and_a_missing_file_is_named(tmp_path, monkeypatch):
    work = tmp_path / "work"
    run_dir = work / "train" / "demo"
    (run_dir / "s1").mkdir(parents=True)
    (run_dir / "s1" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 2.0 / s, "lr": 1e-4}) + "\n" for s in (1, 2)))
    with Catalog(work / "catalog.duckdb") as cat:
        run_id = cat.start_run("train")
        _stage(cat, run_dir, "s1", run_id)
        _stage(cat, run_dir, "s2", run_id)  # its metrics file was never written
    moved = tmp_path / "shared" / "work"
    moved.parent.mkdir()
    work.rename(moved)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with Catalog(moved / "catalog.duckdb", read_only=True) as cat:
        html = write_report(cat, run_id, tmp_path / "r.html").read_text()
    training = html.split("<section id='training")[1].split("<section")[0]
    assert training.count("<img") == 2  # s1: loss and learning rate, read from the moved folder
    missing = str(moved / "train" / "demo" / "s2" / "metrics.jsonl")
    assert f"<div class='warning'>&#9888; stage s2: no metrics at {missing}: its loss and learning rate are not " \
        "drawn</div>" in training
