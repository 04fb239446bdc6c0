"""A build interrupted mid-way resumes without loss or duplicates; judge failures and empty generations are reasons.

Uses a scripted policy engine (no model): the pairs of an interrupted-then-resumed build
must equal those of an uninterrupted build, row for row.

    pytest tests/curation/preference/test_resume.py -q
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from core.catalog import Catalog
from inference import Completion, EngineError, GenerationResult
from curation.preference.build import build_pair_set
from curation.preference.config import DpoConfig

CAPTIONS = ["A red circle on a plain blue background.", "A red circle.", "red red red red red red", "  "]


class ScriptedEngine:
    """Captions from a fixed list; QA answers by question; ``fail_after`` generate calls, then every call fails."""

    def __init__(self, config, fail_after=None, judge_reply="4"):
        self.config, self.fail_after, self.calls, self.judge_reply = config, fail_after, 0, judge_reply

    def generate(self, requests, params):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("worker lost")
        out = []
        for r in requests:
            text = r.messages[0]["content"]
            text = text if isinstance(text, str) else text[-1]["text"]
            if text.startswith("You grade"):  # the judge
                texts = [self.judge_reply]
            elif "colour" in text:  # QA: positives right and complete, negatives one word
                texts = (["The shape is a red circle."] if params.temperature < 1 else ["Square."]) * params.n
            else:
                texts = [CAPTIONS[k % len(CAPTIONS)] for k in range(params.n)]
            out.append(GenerationResult(r.request_id, [Completion(t, "stop", 8) for t in texts], 20))
        return out

    def score(self, requests, score_roles=("assistant",)):
        raise NotImplementedError

    def close(self):
        pass


def make_catalog(path, tmp):
    cat = Catalog(path)
    media, samples = [], []
    for i in range(5):
        img = tmp / f"img{i}.png"
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(img)
        h = f"{i:064d}"
        media.append({"media_hash": h, "kind": "image", "bytes": img.stat().st_size, "storage_path": str(img)})
        task, conv = ("caption", [{"from": "human", "value": "<image>"},
                                  {"from": "gpt", "value": "A red circle on a plain blue background."}])
        if i >= 3:
            task, conv = ("qa", [{"from": "human", "value": "<image>\nWhat colour is the shape?"},
                                 {"from": "gpt", "value": "Red circle."}])
        samples.append({"sample_id": f"src/{i}", "source": "src", "item": str(i), "task": task, "conversation": conv,
                        "media_hashes": [h], "content_sha256": h})
    cat.insert("media", media)
    cat.insert("samples", samples)
    return cat


@pytest.fixture
def checkpoint(tmp_path):
    ck = tmp_path / "policy"
    ck.mkdir()
    (ck / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    return ck


CFG = DpoConfig.model_validate({
    "batch_inputs": 1,
    "image_caption": {"sampling": {"n": 4}, "min_margin": 0.2, "max_pairs": 2},
    "qa": {"min_words": 2},
})
IDS = [f"src/{i}" for i in range(5)]


def pairs_of(cat):
    return cat.query("SELECT pair_id, sample_id, chosen, rejected, chosen_score, rejected_score, margin, "
                     "chosen_reason, rejected_reason FROM dpo_pairs ORDER BY pair_id")


def test_interrupted_build_resumes_to_the_same_pairs(tmp_path, checkpoint):
    ref = make_catalog(tmp_path / "ref.duckdb", tmp_path)
    build_pair_set(ref, checkpoint, IDS, CFG, out_dir=tmp_path / "ref-out", engine_factory=ScriptedEngine)
    expected = pairs_of(ref)
    assert {p["sample_id"] for p in expected} == set(IDS)

    cat = make_catalog(tmp_path / "cat.duckdb", tmp_path)
    # two inputs get decided (one generate + one judge call each), then the engine dies
    with pytest.raises(EngineError, match="worker lost"):
        build_pair_set(cat, checkpoint, IDS, CFG, out_dir=tmp_path / "out",
                       engine_factory=lambda c: ScriptedEngine(c, fail_after=4))
    done = cat.scalar("SELECT count(*) FROM dpo_inputs")
    assert done == 2 and cat.scalar("SELECT count(DISTINCT sample_id) FROM dpo_pairs") == done
    report = build_pair_set(cat, checkpoint, IDS, CFG, out_dir=tmp_path / "out", engine_factory=ScriptedEngine)
    assert report.skipped == 2 and report.decided == 3
    assert pairs_of(cat) == expected
    # Image pairs by hand. Judge "4" of 5 -> 0.75 each; reference content words {red circle plain blue background}.
    # full caption: 0.75 + 1 = 1.75; "A red circle.": 0.75 + 2/5 = 1.15; "red"x6: 0.75 + 1/5 - (1 - 1/4) = 0.2;
    # the empty one is refused. Best vs worst only: with three ranked, the 2nd pair would pair 1.15 with itself.
    img = [p for p in expected if p["sample_id"] == "src/0"]
    assert [(p["chosen"], p["rejected"]) for p in img] == [(CAPTIONS[0], CAPTIONS[2])]
    assert img[0]["chosen_score"] == pytest.approx(1.75) and img[0]["rejected_score"] == pytest.approx(0.2)
    qa = [p for p in expected if p["sample_id"] == "src/3"][0]
    assert (qa["chosen"], qa["rejected"], qa["rejected_reason"]) == ("The shape is a red circle.", "Square.", "too_brief")


def test_failing_judge_and_empty_generations_give_reasons_not_pairs(tmp_path, checkpoint):
    cat = make_catalog(tmp_path / "cat.duckdb", tmp_path)
    build_pair_set(cat, checkpoint, IDS[:3], CFG, out_dir=tmp_path / "out",
                   engine_factory=lambda c: ScriptedEngine(c, judge_reply="great caption"))
    rows = cat.query("SELECT reason, detail, n_pairs FROM dpo_inputs ORDER BY sample_id")
    assert [r["reason"] for r in rows] == ["judge_failed"] * 3 and all(r["n_pairs"] == 0 for r in rows)
    assert "unparseable rating" in rows[0]["detail"]
    assert cat.scalar("SELECT count(*) FROM dpo_candidates WHERE reason = 'empty_generation'") == 3
    assert cat.scalar("SELECT count(*) FROM dpo_pairs") == 0
