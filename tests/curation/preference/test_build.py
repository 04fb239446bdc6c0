"""End to end: a DPO pair set from the tiny Qwen2-VL on demo samples; records, shards, reruns, lineage, stats.

The tiny model has random weights, so its text is noise: the config here makes it still
reach decisions (a log-prob judge always decides; stop strings that the noise hits often,
"5" and ".", end generations the way EOS ends a trained model's),
and the test checks that every input got a decision with a reason, that the pairs obey
the rules of their domain, and that the shards hold exactly the recorded pairs (and load as TRL rows).

    pytest tests/curation/preference/test_build.py -q
"""
from __future__ import annotations

import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
import yaml

from core.catalog import Catalog
from curation.preference.build import build_pair_set, checkpoint_sha256, mixture_inputs, pick_backend
from curation.preference.config import DpoConfig
from curation.preference.records import load_preference_dataset
from pipelines.report.sections import dpo_pairs

STOP = ["5", "."]


def tiny_config(**over) -> DpoConfig:
    sampling = {"max_tokens": 16, "stop": STOP}
    return DpoConfig.model_validate({
        "seed": 0, "batch_inputs": 4, "engine": {"video_frames": 4, "batch_size": 8},
        "judge": {"mode": "logprob", "rating_scale": 5},
        "qa": {"positive": {"temperature": 0.7, "n": 3, **sampling}, "negative": {"temperature": 1.5, "n": 3, **sampling},
               "min_words": 2, "max_words": 40},
        "image_caption": {"sampling": {"temperature": 1.2, "n": 4, **sampling}, "min_margin": 0.05, "max_pairs": 2},
        "video_caption": {"sampling": {"temperature": 0.8, **sampling}, "min_words": 1},
        **over,
    })


def add_video_sample(cat: Catalog, path, item: str, n_frames: int | None) -> str:
    """A catalog sample pointing at a video we wrote (n_frames frames) or at garbage bytes (None)."""
    if n_frames is None:
        path.write_bytes(b"not a video at all " * 50)
    else:
        with av.open(str(path), "w") as out:
            s = out.add_stream("libx264", rate=8)
            s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
            for i in range(n_frames):
                img = np.full((48, 64, 3), 20 * i % 255, np.uint8)
                out.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            out.mux(s.encode(None))
    h = f"{item:0>64}"
    cat.insert("media", [{"media_hash": h, "kind": "video", "bytes": path.stat().st_size, "storage_path": str(path)}])
    cat.insert("samples", [{"sample_id": f"extra/{item}", "source": "extra", "item": item, "task": "caption",
                            "conversation": [{"from": "human", "value": "<video>\nDescribe."},
                                             {"from": "gpt", "value": "Frames fade."}],
                            "media_hashes": [h], "content_sha256": h}])
    return f"extra/{item}"


MIXTURE = {
    "name": "test-dpo", "seed": 0,
    "stages": {"dpo": [
        {"source": "video_qa", "count": 2, "tasks": ["qa"]}, {"source": "image_qa", "count": 2, "tasks": ["qa"]},
        {"source": "image_captions", "count": 2, "tasks": ["caption"]},
        {"source": "kinetics_like", "count": 3, "tasks": ["caption"]}, {"source": "extra", "count": "all"},
    ]},
}


def run_cli(*args: str, settings) -> str:
    from typer.testing import CliRunner

    from pipelines.cli import app

    result = CliRunner().invoke(app, ["--config", str(settings), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def built(demo_catalog, tiny_models, tmp_path_factory):
    """`mavors dpo build` on a copy of the demo catalog plus a too-short and an undecodable video."""
    tmp = tmp_path_factory.mktemp("dpo-build")
    shutil.copy(demo_catalog, tmp / "catalog.duckdb")
    with Catalog(tmp / "catalog.duckdb") as cat:
        add_video_sample(cat, tmp / "short.mp4", "short", 10)
        add_video_sample(cat, tmp / "broken.mp4", "broken", None)
    settings = tmp / "settings.yaml"
    settings.write_text(yaml.safe_dump({"work_dir": str(tmp / "work"), "catalog_path": str(tmp / "catalog.duckdb")}))
    (tmp / "mixture.yaml").write_text(yaml.safe_dump(MIXTURE))
    cfg = tiny_config()
    (tmp / "dpo.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    args = ("dpo", "build", "--checkpoint", str(tiny_models["qwen2vl"]), "--mixture", str(tmp / "mixture.yaml"),
            "--dpo-config", str(tmp / "dpo.yaml"))
    output = run_cli(*args, settings=settings)
    cat = Catalog(tmp / "catalog.duckdb")
    (set_id, ck_hash), = [tuple(r.values()) for r in cat.query(
        "SELECT pair_set_id, checkpoint_sha256 FROM dpo_pair_sets")]
    ids, _ = mixture_inputs(cat, "test-dpo")
    shards = [str(cat.resolved(r["path"])) for r in cat.query(  # stored relative to the catalog's folder
        "SELECT path FROM shards WHERE mixture = ? ORDER BY path", [f"dpo/{set_id}"])]
    yield Built(cat, set_id, ck_hash, ids, cfg, tmp, shards, output, args, settings)
    cat.close()


@dataclass
class Built:
    cat: Catalog
    set_id: str
    checkpoint_sha256: str
    ids: list[str]
    cfg: DpoConfig
    tmp: Path
    shards: list[str]
    output: str
    args: tuple[str, ...]
    settings: Path


def test_every_input_decided_with_a_reason(built):
    cat, set_id = built.cat, built.set_id
    rows = {r["sample_id"]: r for r in cat.query("SELECT * FROM dpo_inputs WHERE pair_set_id = ?", [set_id])}
    assert set(rows) == set(built.ids) and len(built.ids) == 11
    assert rows["extra/short"]["reason"] == "video_too_short" and rows["extra/short"]["n_pairs"] == 0
    assert rows["extra/broken"]["reason"] == "undecodable_video"
    assert cat.scalar("SELECT count(*) FROM quarantine WHERE item = 'broken' AND stage = 'dpo'") == 1
    assert cat.scalar("SELECT count(*) FROM quarantine WHERE item = 'short'") == 0  # still fine for other stages
    # the pairs table agrees with the per-input counts, per domain
    for domain in ("qa", "image_caption", "video_caption"):
        n_in = sum(r["n_pairs"] for r in rows.values() if r["domain"] == domain)
        assert cat.scalar("SELECT count(*) FROM dpo_pairs WHERE pair_set_id = ? AND domain = ?",
                          [set_id, domain]) == n_in
    # every candidate carries a decision and a reason; the run is recorded as completed
    cands = cat.query("SELECT status, reason FROM dpo_candidates WHERE pair_set_id = ?", [set_id])
    assert cands and all(c["reason"] and c["status"] != "pending" for c in cands)
    assert cat.scalar("SELECT status FROM runs WHERE command = 'dpo build'") == "completed"
    assert set_id in built.output and "video_too_short" in built.output
    print("\ninputs:", cat.query("SELECT domain, reason, count(*) n, sum(n_pairs) pairs FROM dpo_inputs "
                                 "GROUP BY ALL ORDER BY ALL"))
    print("candidates:", cat.query("SELECT pool, status, reason, count(*) n FROM dpo_candidates GROUP BY ALL ORDER BY ALL"))


def test_pairs_obey_their_domain_rules(built):
    cat, set_id, cfg = built.cat, built.set_id, built.cfg
    pairs = cat.query("SELECT * FROM dpo_pairs WHERE pair_set_id = ?", [set_id])
    assert {p["domain"] for p in pairs} == {"qa", "image_caption", "video_caption"}
    cands = {(c["sample_id"], c["candidate_id"]): c for c in cat.query(
        "SELECT * FROM dpo_candidates WHERE pair_set_id = ?", [set_id])}
    for p in pairs:
        chosen, rejected = cands[(p["sample_id"], p["chosen_candidate"])], cands[(p["sample_id"], p["rejected_candidate"])]
        assert chosen["status"] == "chosen" and rejected["status"] == "rejected"
        assert chosen["text"].strip() and rejected["text"].strip()
        assert p["checkpoint_sha256"] == built.checkpoint_sha256
        if p["domain"] == "image_caption":
            assert p["chosen_score"] >= p["rejected_score"] + cfg.image_caption.min_margin
        if p["domain"] == "qa":
            assert chosen["finish_reason"] == "stop" and chosen["reason"] == "correct_terminated"
            assert rejected["reason"] in ("incorrect", "too_brief")
            assert rejected["temperature"] > chosen["temperature"]
        if p["domain"] == "video_caption":
            assert chosen["pool"] == "original" and rejected["pool"] == "shuffled" and chosen["finish_reason"] == "stop"
            audit = cat.scalar("SELECT audit_path FROM dpo_inputs WHERE pair_set_id = ? AND sample_id = ?",
                               [set_id, p["sample_id"]])
            assert audit == p["rejected_media_path"]
            with av.open(cat.resolved(audit)) as shuffled, av.open(cat.resolved(p["media_paths"][0])) as original:
                assert shuffled.streams.video[0].frames == original.streams.video[0].frames


def test_pair_shards_hold_the_stored_pairs_and_load_as_trl_rows(built):
    """Pair shards are the one shard record format, read back with plain tarfile and stock webdataset:
    KEY.json + KEY.<i>.<ext> per medium (placeholder order), conversation and answers exactly the dpo_pairs row,
    media the bytes of the files the row names; TRL's rows are built from them when loaded."""
    import webdataset as wds

    rows = {r["pair_id"]: r for r in built.cat.query("SELECT * FROM dpo_pairs WHERE pair_set_id = ?",
                                                     [built.set_id])}
    members = {}
    for shard in built.shards:
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                members[m.name] = tar.extractfile(m).read()
    records = {k.removesuffix(".json"): json.loads(v) for k, v in members.items() if k.endswith(".json")}
    assert sorted(r["pair_id"] for r in records.values()) == sorted(rows)
    for key, rec in records.items():
        row = rows[rec["pair_id"]]
        prompt = json.loads(row["prompt"]) if isinstance(row["prompt"], str) else row["prompt"]
        assert rec["conversation"] == prompt  # stored once, as LLaVA turns
        assert (rec["chosen"], rec["rejected"], rec["sample_id"]) == (row["chosen"], row["rejected"], row["sample_id"])
        value = rec["conversation"][0]["value"]
        assert value.count("<image>") + value.count("<video>") == len(row["media_paths"])
        for i, (m, kind, path) in enumerate(zip(rec["media"], row["media_kinds"], row["media_paths"])):
            assert m["file"] == f"{i}.{Path(path).suffix.lstrip('.').lower()}" and m["kind"] == kind
            assert members[f"{key}.{m['file']}"] == built.cat.resolved(path).read_bytes()
        assert {n for n in members if n.startswith(key + ".")} == {f"{key}.json"} | {
            f"{key}.{m['file']}" for m in rec["media"]}
    stock = list(wds.WebDataset(built.shards, shardshuffle=False, empty_check=False))
    assert {s["__key__"] for s in stock} == set(records)

    ds = load_preference_dataset(built.shards)
    assert {"prompt", "chosen", "rejected", "images", "videos"} <= set(ds.column_names)
    assert len(ds) == len(rows)
    for r in ds:
        row = rows[r["meta"]["pair_id"]]
        parts = r["prompt"][0]["content"]
        assert [p["type"] for p in parts[:-1]] == row["media_kinds"] and parts[-1]["type"] == "text"
        assert r["chosen"][0]["content"][0]["text"] == row["chosen"]
        assert len(r["images"]) == row["media_kinds"].count("image")
        assert len(r["videos"]) == row["media_kinds"].count("video")
    image_rows = [r for r in ds if r["meta"]["domain"] == "image_caption"]
    assert image_rows and all(len(r["images"]) == 1 and r["images"][0].size[0] > 0 for r in image_rows)


def test_rerun_same_checkpoint_adds_nothing_new_checkpoint_makes_new_set(built, tiny_models):
    cat, set_id = built.cat, built.set_id
    tables = ("dpo_inputs", "dpo_candidates", "dpo_pairs", "dpo_pair_sets", "shards")
    counts = {t: cat.scalar(f"SELECT count(*) FROM {t}") for t in tables}
    cat.close()  # the CLI opens the catalog itself
    run_cli(*built.args, settings=built.settings)
    built.cat = cat = Catalog(built.tmp / "catalog.duckdb")
    assert counts == {t: cat.scalar(f"SELECT count(*) FROM {t}") for t in tables}

    def no_engine(_config):
        raise AssertionError("a rerun with nothing to do must not load a model")

    mix_sha = cat.scalar("SELECT mixture_sha256 FROM dpo_pair_sets")
    again = build_pair_set(cat, tiny_models["qwen2vl"], built.ids, built.cfg, out_dir=built.tmp / "work" / "dpo",
                           mixture="test-dpo", mixture_sha256=mix_sha, run_id="r2", engine_factory=no_engine)
    assert again.pair_set_id == set_id and again.skipped == len(built.ids) and again.decided == 0
    assert sorted(again.shards) == built.shards

    # a "new checkpoint": same model, one changed file -> new content hash -> a new set beside the old one
    new_ck = built.tmp / "ck2"
    shutil.copytree(tiny_models["qwen2vl"], new_ck)
    (new_ck / "generation_config.json").write_text(
        (new_ck / "generation_config.json").read_text().replace("{", '{"_note": "stage2 step 2",', 1))
    assert checkpoint_sha256(new_ck) != built.checkpoint_sha256
    few = ["image_captions/cap-0000", "extra/short"]
    second = build_pair_set(cat, new_ck, few, built.cfg, out_dir=built.tmp / "work" / "dpo", mixture="test-dpo",
                            mixture_sha256=mix_sha, run_id="r3")
    assert second.pair_set_id != set_id
    sets = cat.query("SELECT pair_set_id, previous_pair_set FROM dpo_pair_sets ORDER BY created_at")
    assert [s["pair_set_id"] for s in sets] == [set_id, second.pair_set_id]
    assert sets[1]["previous_pair_set"] == set_id
    assert cat.scalar("SELECT count(*) FROM dpo_inputs WHERE pair_set_id = ?", [set_id]) == len(built.ids)

    (_, rows), = dpo_pairs(cat).tables
    by_key = {(r[0], r[2], r[3]): r[4] for r in rows}
    assert by_key[(set_id, "video_caption", "video_too_short")] == 1
    assert by_key[(second.pair_set_id, "video_caption", "video_too_short")] == 1


def test_backend_follows_checkpoint_model_type():
    assert pick_backend(DpoConfig(), "mavors") == "mavors"
    assert pick_backend(DpoConfig(), "qwen2_vl") == "transformers"
    assert pick_backend(DpoConfig(auto_vlm_backend="vllm"), "qwen2_vl") == "vllm"
    assert pick_backend(DpoConfig(backend="transformers"), "mavors") == "transformers"
