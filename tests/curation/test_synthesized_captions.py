"""Synthesized captions reach training: the demo's Stage 1.5 trains kinetics_like on its merged captions.

    pytest tests/curation/test_synthesized_captions.py -q

The curate flow's order on a copy of the ingested demo catalog, with the shipped demo roster,
dedup policy and mixtures (tiny random models): caption synthesis -> PPL -> dedup -> held-out
split -> mixtures -> shards. PPLs are written by a formula here (the scorer is tested elsewhere;
the re-captions get the lowest PPL, so ranking them would let them win). The shards are read
with ``tarfile``, and every claim is checked against the catalog with SQL written here.
"""
from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from core.catalog import Catalog
from core.paths import MANIFESTS
from curation.captions import RosterConfig, load_roster, run_captions
from curation.dedup import load_policy, run_policy
from curation.heldout import reserve_heldout
from curation.mixtures import load_mixture, select_mixture
from curation.shards.build import build_shards

SOURCE = "kinetics_like"  # the demo's label-only video source ("circle moving left")


def _demo_roster(tiny_models) -> RosterConfig:
    """The shipped demo roster with the session's tiny checkpoints and short outputs."""
    data = json.loads(load_roster(MANIFESTS / "captioners" / "demo.yaml", "/w").model_dump_json())  # paths replaced
    for entry in data["captioners"] + [data["merger"]]:
        entry["engine"]["model_path"] = str(tiny_models[Path(entry["engine"]["model_path"]).name])
        entry["sampling"]["max_tokens"] = 12
    return RosterConfig.model_validate(data)


def _tar_records(shard_dir: Path) -> list[dict]:
    """The JSON of every record of every shard in ``shard_dir``, read with the standard library."""
    records = []
    for path in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    records.append(json.loads(tar.extractfile(member).read()))
    return records


@pytest.fixture(scope="module")
def curated(demo_catalog, tiny_models, tmp_path_factory):
    """(catalog path, Stage-1.5 shard folder) after the curate flow's steps, in its order."""
    root = tmp_path_factory.mktemp("synth-captions")
    path = Path(shutil.copy(demo_catalog, root / "catalog.duckdb"))
    policy = load_policy(MANIFESTS / "dedup" / "demo.yaml")
    with Catalog(path) as cat:
        report = run_captions(cat, _demo_roster(tiny_models), use_ray=False, run_id="test")
        assert report.samples_written > 0
        ids = [r["sample_id"] for r in cat.query("SELECT sample_id FROM samples ORDER BY sample_id")]
        cat.insert("ppl_scores", [{
            "sample_id": sid, "scorer": policy.scorer, "template_version": policy.template_version,
            "text_scope": policy.text_scope, "ppl": 1.0 if "+synth/" in sid else 2.0 + (i * 37 % 101) / 10,
            "mean_nll": 0.5, "n_tokens": 4, "backend": "transformers", "model_path": "-"} for i, sid in enumerate(ids)])
        run_policy(cat, policy, run_id="test")
        reserve_heldout(cat, per_family=4, seed=0)  # the flow's default, before any mixture
        for name in ("demo-stage1", "demo-stage1_5"):
            select_mixture(cat, load_mixture(MANIFESTS / "mixtures" / f"{name}.yaml"))
        mixture = load_mixture(MANIFESTS / "mixtures" / "demo-stage1_5.yaml")
        [build] = build_shards(cat, mixture, root / "shards", parallel=False, run_id="test")
    return path, build.out_dir


def test_stage1_5_trains_the_label_only_source_on_its_merged_captions(curated):
    path, shard_dir = curated
    records = _tar_records(shard_dir)
    assert records
    with Catalog(path) as cat:
        synth = [r for r in records if r["source"] == f"{SOURCE}+synth"]
        # no label-style answer of the source reaches Stage 1.5, only its re-captions
        assert not [r for r in records if r["source"] == SOURCE]
        # every re-caption whose media is neither held out nor dropped as a duplicate is there
        expected = {r["sample_id"] for r in cat.query(
            """SELECT s.sample_id FROM samples s JOIN caption_samples c USING (sample_id)
               JOIN dedup_decisions o ON o.sample_id = c.from_sample AND o.kept
               WHERE s.source = ? AND c.media_hash NOT IN (SELECT media_hash FROM heldout)""", [f"{SOURCE}+synth"])}
        assert expected and {r["sample_id"] for r in synth} == expected
        for r in synth:
            [medium] = r["media"]
            [row] = cat.query(
                """SELECT m.text, m.status, m.media_hash, m.raw_caption_ids, c.from_sample
                   FROM caption_samples c JOIN merged_captions m USING (merge_id) WHERE c.sample_id = ?""",
                [r["sample_id"]])
            # the answer is the merged caption recorded for this sample's media
            assert row["status"] == "ok" and row["media_hash"] == medium["media_hash"]
            assert r["conversation"][0]["value"].startswith("<video>\n")
            assert r["conversation"][1] == {"from": "gpt", "value": row["text"]}
            # lineage: the merge saw every accepted raw caption of the same media (both captioners take videos)
            raws = cat.query("SELECT media_hash, captioner, status FROM captions "
                             "WHERE caption_id IN (SELECT unnest(?::TEXT[]))", [row["raw_caption_ids"]])
            accepted = {x["captioner"] for x in cat.query(
                "SELECT captioner FROM captions WHERE media_hash = ? AND status = 'ok'", [medium["media_hash"]])}
            assert len(raws) == len(row["raw_caption_ids"]) and accepted <= {"tiny-vlm-a", "tiny-vlm-b"}
            assert {x["captioner"] for x in raws} == accepted
            assert all(x["media_hash"] == medium["media_hash"] and x["status"] == "ok" for x in raws)
            # ...and the sample it re-captions is the source's own sample of that media
            [origin] = cat.query("SELECT source, media_hashes FROM samples WHERE sample_id = ?", [row["from_sample"]])
            assert origin == {"source": SOURCE, "media_hashes": [medium["media_hash"]]}
            assert r["item"] == row["from_sample"].split("/", 1)[1]
            # the shard's dedup reference is the re-caption's own decision: its origin was kept
            assert r["dedup"]["reason"] == "origin_kept"


def test_both_texts_stay_available_to_other_stages(curated):
    """Dedup never plays a re-caption against its origin: Stage 1 still draws the source's own captions of the
    media whose re-captions Stage 1.5 draws, and the ranking groups hold no re-caption."""
    path, _ = curated
    with Catalog(path) as cat:
        media_of = {r["stage"]: set(r["hashes"]) for r in cat.query(
            """SELECT m.stage, list(s.media_hashes[1]) AS hashes FROM mixture_members m JOIN samples s USING (sample_id)
               WHERE s.source IN (?, ?) GROUP BY m.stage""", [SOURCE, f"{SOURCE}+synth"])}
        assert media_of["1.5"] and media_of["1.5"] <= media_of["1"]
        ranked_synth = cat.scalar("SELECT count(*) FROM dedup_decisions WHERE source LIKE '%+synth' "
                                  "AND (rank IS NOT NULL OR reason NOT IN ('origin_kept', 'origin_dropped'))")
        assert ranked_synth == 0
