"""Caption synthesis end to end on the demo catalog with tiny random models, on Ray Data.

    pytest tests/curation/test_captions.py -q

Engines are wrapped (``Recorder``) to count their calls through a log file (Ray
actors live in other processes), to inject a failure for one media, and to make
the merger answer with a ``<think>`` block. Expected counts come from the catalog
(media per source and kind), not from the code under test.
"""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest

from curation.captions import (
    CaptionerConfig, GateConfig, RosterConfig, SamplingConfig, gate, load_roster, run_captions, split_reasoning,
)
from core.catalog import Catalog
from core.paths import MANIFESTS
from inference import EngineError, load_engine

pytestmark = pytest.mark.usefixtures("ray_by_value")  # Ray workers get this module by value

SOURCES = ["kinetics_like", "image_captions"]
REASONING = "Description 1 says one thing, description 2 another; I keep what they share."


class Recorder:
    """An engine wrapper: logs every generate call (model, request ids, prompt texts), fails on chosen ids,
    prefixes the merger's answers with a reasoning block."""

    def __init__(self, config, *, log: str, fail: tuple[str, ...] = (), think_for: str | None = None):
        self.config = config
        self.engine = load_engine(config)
        self.log, self.fail = log, set(fail)
        self.think = think_for is not None and str(config.model_path) == think_for

    def generate(self, requests, params):
        with open(self.log, "a") as f:
            f.write(json.dumps({"model": str(self.config.model_path), "ids": [r.request_id for r in requests],
                                "prompts": [_text(r.messages) for r in requests]}) + "\n")
        if self.fail & {r.request_id for r in requests}:
            raise RuntimeError("injected engine failure")
        results = self.engine.generate(requests, params)
        if not self.think:
            return results
        from dataclasses import replace

        return [replace(r, completions=[replace(c, text=f"<think>{REASONING}</think>\n{c.text}")
                                        for c in r.completions]) for r in results]

    def score(self, requests, score_roles=("assistant",)):
        return self.engine.score(requests, score_roles)

    def close(self):
        self.engine.close()


def _text(messages):
    content = messages[-1]["content"]
    return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)


def roster_for(tiny_models, extra: list[CaptionerConfig] = ()) -> RosterConfig:
    """The shipped demo roster with the session's tiny checkpoints."""
    roster = load_roster(MANIFESTS / "captioners" / "demo.yaml", "/w")  # {work_dir}/models/<name>: replaced below
    paths = {"qwen2vl": tiny_models["qwen2vl"], "qwen2": tiny_models["qwen2"]}
    data = json.loads(roster.model_dump_json())
    for entry in data["captioners"] + [data["merger"]]:
        entry["engine"]["model_path"] = str(paths[Path(entry["engine"]["model_path"]).name])
    data["captioners"] += [json.loads(c.model_dump_json()) for c in extra]
    for entry in data["captioners"]:
        entry["sampling"]["max_tokens"] = 12
    data["merger"]["sampling"]["max_tokens"] = 16
    data.update(max_retries=1, retry_backoff_s=0.01)
    return RosterConfig.model_validate(data)


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def run(catalog_path: Path, roster, log: Path, *, use_ray: bool = False, sources=SOURCES, **recorder) -> dict:
    """One captions run with Recorder engines. Ray Data runs in the first run and the rerun; the other runs
    use the in-process executor (the same stage objects per batch) to keep actor start-ups few on 2 cores."""
    factory = functools.partial(Recorder, log=str(log), think_for=str(roster.merger.engine.model_path), **recorder)
    with Catalog(catalog_path) as cat:
        return run_captions(cat, roster, sources, factory=factory, run_id="test", use_ray=use_ray).as_dict()


def media_of(cat: Catalog) -> dict[str, str]:
    """media_hash -> kind of the single-media samples of SOURCES (independent of the code under test)."""
    return {r["h"]: r["kind"] for r in cat.query(
        "SELECT DISTINCT s.media_hashes[1] AS h, m.kind FROM samples s JOIN media m ON m.media_hash = s.media_hashes[1] "
        "WHERE s.source IN ('kinetics_like', 'image_captions')")}


@pytest.fixture(scope="module")
def first_run(demo_catalog, tiny_models, ray_local, tmp_path_factory):
    """One full run on a copy of the demo catalog: (catalog path, call log, report, roster)."""
    root = tmp_path_factory.mktemp("captions")
    path = Path(shutil.copy(demo_catalog, root / "catalog.duckdb"))
    roster = roster_for(tiny_models)
    report = run(path, roster, root / "calls.jsonl", use_ray=True)
    return path, root / "calls.jsonl", report, roster


def test_two_captioners_and_merger_on_images_and_videos(first_run):
    path, log, report, roster = first_run
    with Catalog(path) as cat:
        media = media_of(cat)
        videos = {h for h, k in media.items() if k == "video"}
        images = set(media) - videos
        assert len(videos) == 6 and len(images) == 10
        raw = cat.query("SELECT media_hash, captioner, text, status, kind FROM captions")
        by = {(r["media_hash"], r["captioner"]) for r in raw}
        # tiny-vlm-a takes images and videos, tiny-vlm-b videos only
        assert by == {(h, "tiny-vlm-a") for h in media} | {(h, "tiny-vlm-b") for h in videos}
        assert all(r["kind"] == media[r["media_hash"]] for r in raw)
        merged = cat.query("SELECT * FROM merged_captions")
        assert {m["media_hash"] for m in merged} == set(media)
        ok = {(r["media_hash"], r["captioner"]) for r in raw if r["status"] == "ok"}
        for m in merged:  # each merge saw exactly the accepted raw captions of its media
            ids = cat.query("SELECT media_hash, captioner FROM captions WHERE caption_id IN "
                            "(SELECT unnest(?::TEXT[]))", [m["raw_caption_ids"]])
            assert {(r["media_hash"], r["captioner"]) for r in ids} == {k for k in ok if k[0] == m["media_hash"]}
        samples = cat.query("SELECT s.*, c.merge_id, c.from_sample FROM samples s "
                            "JOIN caption_samples c USING (sample_id) ORDER BY sample_id")
        assert {s["source"] for s in samples} == {"kinetics_like+synth", "image_captions+synth"}
        assert {s["media_hashes"][0] for s in samples} == {m["media_hash"] for m in merged if m["status"] == "ok"}
        text_of = {m["merge_id"]: m["text"] for m in merged}
        for s in samples:
            conv = json.loads(s["conversation"])
            assert s["task"] == "caption" and conv[1]["value"] == text_of[s["merge_id"]]
            kind = media[s["media_hashes"][0]]
            assert conv[0]["value"].startswith(f"<{kind}>\n")
            assert s["item"] == s["from_sample"].split("/", 1)[1]
        assert cat.scalar("SELECT count(*) FROM sources WHERE name LIKE '%+synth'") == 2
    stages = report["stages"]
    assert stages["decode"]["items"] == len(media) and stages["decode"]["failures"] == 0
    assert stages["caption:tiny-vlm-a"]["items"] == 16 and stages["caption:tiny-vlm-b"]["items"] == 6
    assert stages["merge"]["items"] == 16


def test_merger_prompt_contains_every_raw_caption(first_run):
    path, log, _, roster = first_run
    merger_calls = [c for c in calls(log) if c["model"] == str(roster.merger.engine.model_path)]
    prompts = {i: p for c in merger_calls for i, p in zip(c["ids"], c["prompts"])}
    with Catalog(path) as cat:
        for m in cat.query("SELECT media_hash, raw_caption_ids FROM merged_captions"):
            texts = [r["text"] for r in cat.query(
                "SELECT text FROM captions WHERE caption_id IN (SELECT unnest(?::TEXT[]))", [m["raw_caption_ids"]])]
            assert texts and all(t in prompts[m["media_hash"]] for t in texts)
            assert f"{len(texts)} descriptions" in prompts[m["media_hash"]]


def test_reasoning_stripped_and_kept(first_run):
    path, *_ = first_run
    with Catalog(path) as cat:
        merged = cat.query("SELECT text, reasoning FROM merged_captions")
        assert merged and all(m["reasoning"] == REASONING and "<think>" not in m["text"]
                              and "</think>" not in m["text"] and REASONING not in m["text"] for m in merged)
        for s in cat.query("SELECT conversation FROM samples WHERE source LIKE '%+synth'"):
            assert "think>" not in s["conversation"] and REASONING not in s["conversation"]


def test_rerun_calls_no_engine(first_run, tmp_path, tiny_models):
    path, _, _, roster = first_run
    copy = Path(shutil.copy(path, tmp_path / "catalog.duckdb"))
    log = tmp_path / "calls.jsonl"
    report = run(copy, roster, log, use_ray=True)
    assert calls(log) == []
    assert (report["raw_new"], report["merged_new"], report["samples_written"]) == (0, 0, 0)


def test_third_captioner_computes_only_its_captions_and_remerges(first_run, tmp_path, tiny_models):
    path, _, _, roster = first_run
    copy = Path(shutil.copy(path, tmp_path / "catalog.duckdb"))
    third = CaptionerConfig(name="tiny-vlm-c", engine=roster.captioners[0].engine, media=["video"],
                            sampling=SamplingConfig(temperature=1.0, max_tokens=16, seed=2))
    with Catalog(copy) as cat:
        before = cat.query("SELECT caption_id, captioner, created_at FROM captions ORDER BY caption_id")
        videos = {h for h, k in media_of(cat).items() if k == "video"}
        old_samples = {r["sample_id"]: r["merge_id"] for r in cat.query("SELECT * FROM caption_samples")}
    log = tmp_path / "calls.jsonl"
    report = run(copy, roster_for(tiny_models, [third]), log)
    captioner_calls = [i for c in calls(log) if c["model"] == str(third.engine.model_path) for i in c["ids"]]
    assert sorted(captioner_calls) == sorted(videos)  # only the new captioner's work: one request per video
    merger_ids = [i for c in calls(log) if c["model"] == str(roster.merger.engine.model_path) for i in c["ids"]]
    with Catalog(copy) as cat:
        after = cat.query("SELECT caption_id, captioner, created_at FROM captions ORDER BY caption_id")
        assert [r for r in after if r["captioner"] != "tiny-vlm-c"] == before
        assert {r["captioner"] for r in after} - {r["captioner"] for r in before} == {"tiny-vlm-c"}
        accepted_new = {r["media_hash"] for r in cat.query(
            "SELECT media_hash FROM captions WHERE captioner = 'tiny-vlm-c' AND status = 'ok'")}
        assert sorted(merger_ids) == sorted(accepted_new)  # re-merged exactly where a caption was added
        links = {r["sample_id"]: r for r in cat.query("SELECT c.*, m.raw_caption_ids FROM caption_samples c "
                                                      "JOIN merged_captions m USING (merge_id)")}
        for sid, link in links.items():
            if link["media_hash"] in accepted_new:
                assert link["merge_id"] != old_samples[sid] and len(link["raw_caption_ids"]) == 3
            else:
                assert link["merge_id"] == old_samples[sid]
    assert report["raw_new"] == len(videos)


def test_engine_failure_on_one_item_is_recorded_and_others_captioned(demo_catalog, tiny_models, ray_local,
                                                                     tmp_path):
    path = Path(shutil.copy(demo_catalog, tmp_path / "catalog.duckdb"))
    roster = roster_for(tiny_models)
    with Catalog(path) as cat:
        media = {h: k for h, k in media_of(cat).items() if k == "video"}
        bad = sorted(media)[0]
        bad_item = cat.scalar("SELECT min(item) FROM samples WHERE media_hashes[1] = ? AND source = 'kinetics_like'",
                              [bad])
    log = tmp_path / "calls.jsonl"
    report = run(path, roster, log, fail=(bad,), sources=["kinetics_like"])
    with Catalog(path) as cat:
        q = cat.query("SELECT source, item, reason, stage, detail FROM quarantine WHERE stage = 'captions'")
        assert {(r["source"], r["item"], r["reason"]) for r in q} == {("kinetics_like", bad_item, "engine_error")}
        assert "injected engine failure" in q[0]["detail"]
        captioned = {r["media_hash"] for r in cat.query("SELECT media_hash FROM captions")}
        assert captioned == set(media) - {bad}
        assert bad not in {r["media_hash"] for r in cat.query("SELECT media_hash FROM merged_captions")}
    # the failing request was tried alone 1 + max_retries times per captioner, after the failed batch
    alone = [c for c in calls(log) if c["ids"] == [bad]]
    assert len(alone) == 2 * (1 + roster.max_retries)
    assert report["stages"]["caption:tiny-vlm-a"]["failures"] == 1
    # the next run retries it (a transient failure is not final) and computes nothing else
    log2 = tmp_path / "calls2.jsonl"
    run(path, roster, log2, sources=["kinetics_like"])
    assert {i for c in calls(log2) for i in c["ids"]} == {bad}
    with Catalog(path) as cat:
        assert cat.scalar("SELECT count(*) FROM merged_captions WHERE media_hash = ?", [bad]) == 1
        assert cat.scalar("SELECT count(*) FROM quarantine WHERE stage = 'captions'") == 0  # recovered


def test_missing_model_fails_before_any_work(demo_catalog, tiny_models, tmp_path):
    path = Path(shutil.copy(demo_catalog, tmp_path / "catalog.duckdb"))
    roster = roster_for(tiny_models)
    broken = roster.model_copy(update={"merger": roster.merger.model_copy(
        update={"engine": roster.merger.engine.model_copy(update={"model_path": tmp_path / "gone"})})})
    with Catalog(path) as cat, pytest.raises(EngineError, match=str(tmp_path / "gone")):
        run_captions(cat, broken, SOURCES, use_ray=False)
    with Catalog(path) as cat:
        assert cat.scalar("SELECT count(*) FROM captions") == 0


@pytest.mark.parametrize("text, finish, reason", [
    ("A red circle moves from left to right.", "stop", None),
    ("   ", "stop", "empty"),
    ("A red circle moves from left", "length", "truncated"),
    ("It is the circle the circle the circle the circle the circle the circle the circle.", "stop", "repetition"),
    ("tttttttttttttttt", "stop", "repetition"),
    ("Ein roter Kreis bewegt sich schnell nach rechts über den Hintergrund.", "stop", "wrong_language"),
    ("Красный круг движется слева направо.", "stop", "wrong_language"),
])
def test_quality_gates(text, finish, reason):
    assert gate(text, finish, GateConfig()) == reason


def test_gates_can_be_switched_off():
    off = GateConfig(truncated=False, max_repeats=None, language=None)
    assert gate("tttttttttttttttt", "length", off) is None
    assert gate("", "stop", off) == "empty"


@pytest.mark.parametrize("raw, answer, reasoning", [
    ("<think>\nA says red, B says blue.\n</think>\n\nA red circle.", "A red circle.", "A says red, B says blue."),
    ("A says red.</think>A red circle.", "A red circle.", "A says red."),  # R1: <think> opened by the template
    ("<think>never closed", "", "never closed"),
    ("A plain caption.", "A plain caption.", None),
])
def test_split_reasoning(raw, answer, reasoning):
    assert split_reasoning(raw) == (answer, reasoning)


def test_shipped_rosters_and_engine_configs_load():
    from inference import load_engine_config

    for path in sorted((MANIFESTS / "engines").glob("*.yaml")):
        load_engine_config(path, "/w")
    paper = load_roster(MANIFESTS / "captioners" / "paper.yaml")
    assert [c.name for c in paper.captioners] == ["qwen2vl-72b", "internvl2_5-78b-mpo", "tarsier-34b"]
    assert paper.captioners[2].media == ["video"] and paper.merger.name == "deepseek-r1-distill-llama-70b"
    assert not paper.captioners[0].engine.trust_remote_code and paper.captioners[1].engine.trust_remote_code
    demo = load_roster(MANIFESTS / "captioners" / "demo.yaml", "/w")
    assert len(demo.captioners) == 2
    assert demo.merger.engine.model_path == Path("/w/models/qwen2")  # "{work_dir}/models/qwen2"
