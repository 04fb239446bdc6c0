"""``mavors quarantine list`` / ``retry`` (:mod:`curation.quarantine`): a sample refused for its media is in the
shards once the media is repaired and the stage retried, exactly as if it had been good from the start.

    pytest tests/curation/shards/test_quarantine_retry.py -q
"""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from typer.testing import CliRunner

from core.catalog import Catalog
from curation.quarantine import clear_quarantine, mixtures_to_rebuild, quarantined
from pipelines.cli import app
from shard_corpus import build, catalog_tables, make_video, shard_files, tar_samples


def _catalog_with_own_b0(base: Path, path: Path, media: Path) -> Path:
    """A copy of the corpus catalog whose broken-video sample reads its medium from ``media`` (a file this
    test may repair; the session's corpus stays as it is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(base, path)
    with Catalog(path) as cat:
        cat.con.execute("UPDATE media SET storage_path = ? WHERE media_hash = (SELECT media_hashes[1] FROM samples "
                        "WHERE sample_id = 'bad/b0')", [str(media)])
    return path


def test_retry_after_repair_shards_the_sample_as_a_clean_build_does(base_catalog, tmp_path, monkeypatch):
    work, b0 = tmp_path / "work", tmp_path / "b0.mp4"
    (tmp_path / "settings.yaml").write_text(yaml.safe_dump({"work_dir": str(work)}))
    monkeypatch.setenv("MAVORS_CONFIG", str(tmp_path / "settings.yaml"))
    b0.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    with Catalog(_catalog_with_own_b0(base_catalog, work / "catalog.duckdb", b0)) as cat:
        build(cat, work / "shards", parallel=False)
        assert [(r["source"], r["item"], r["reason"]) for r in quarantined(cat)] == [("bad", "b0", "undecodable_video")]
    assert "bad/b0" not in {meta for shard in (work / "shards").rglob("*.tar") for meta in _sample_ids(shard)}

    listed = CliRunner().invoke(app, ["quarantine", "list", "--stage", "shards"], env={"COLUMNS": "250"})
    assert listed.exit_code == 0, listed.output
    assert "1 quarantined" in listed.output and "undecodable_video" in listed.output and " b0 " in listed.output
    assert "0 quarantined" in CliRunner().invoke(app, ["quarantine", "list", "--stage", "ingest"]).output

    make_video(b0, 24, 12, 40, 32)  # the medium repaired in place
    retried = CliRunner().invoke(app, ["quarantine", "retry", "--stage", "shards", "--reason", "undecodable_video",
                                       "--no-ray"], env={"COLUMNS": "250"})
    assert retried.exit_code == 0, retried.output
    assert "cleared 1 quarantine row(s) of stage shards" in retried.output and "rebuilding mixture tm" in retried.output

    # the reference: the same corpus with b0 good from the start, built once
    with Catalog(_catalog_with_own_b0(base_catalog, tmp_path / "ref" / "catalog.duckdb", b0)) as cat:
        build(cat, tmp_path / "ref" / "shards", parallel=False)
        reference = catalog_tables(cat, tmp_path / "ref" / "shards")
    with Catalog(work / "catalog.duckdb") as cat:
        assert quarantined(cat) == [] and catalog_tables(cat, work / "shards") == reference
        assert cat.query("SELECT command, status FROM runs WHERE command = 'quarantine retry'") == [
            {"command": "quarantine retry", "status": "completed"}]
    assert shard_files(work / "shards") == shard_files(tmp_path / "ref" / "shards")  # rewritten where the plan changed
    assert "bad/b0" in {meta for shard in (work / "shards").rglob("*.tar") for meta in _sample_ids(shard)}


def _sample_ids(shard: Path) -> list[str]:
    import json

    return [json.loads(files["json"])["sample_id"] for files in tar_samples(shard).values()]


def test_clear_by_stage_and_reason_and_the_mixtures_concerned(base_catalog, tmp_path):
    shutil.copy(base_catalog, tmp_path / "c.duckdb")
    with Catalog(tmp_path / "c.duckdb") as cat:
        build(cat, tmp_path / "shards", parallel=False)  # quarantines bad/b0 (stage shards)
        cat.quarantine([{"source": "img", "item": "c1", "reason": "engine_error", "detail": "x", "stage": "ppl"},
                        {"source": "img", "item": "c2", "reason": "too_long", "detail": "y", "stage": "ppl"}])
        assert [r["item"] for r in quarantined(cat, stage="ppl")] == ["c1", "c2"]
        assert [m.name for m in mixtures_to_rebuild(cat, quarantined(cat, stage="shards"))] == ["tm"]
        assert [r["item"] for r in clear_quarantine(cat, "ppl", reason="engine_error")] == ["c1"]
        assert [(r["stage"], r["item"]) for r in quarantined(cat)] == [("ppl", "c2"), ("shards", "b0")]
        assert mixtures_to_rebuild(cat, []) == []
