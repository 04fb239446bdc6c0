"""The run report page: every section renders from hand-built catalog rows, with the counts those rows imply."""
from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser

import pytest

from pipelines.report.html import resolve_run, write_report
from pipelines.report.sections import RUN_REPORT, build_sections


class _Page(HTMLParser):
    """Collects <h2> titles, table cells per section and the embedded images."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, dict] = {}
        self._current = None
        self._in_h2 = self._in_cell = False
        self._cell = ""

    def handle_starttag(self, tag, attrs):
        if tag == "h2":
            self._in_h2, self._title = True, ""
        elif tag in ("td", "th"):
            self._in_cell, self._cell = True, ""
        elif tag == "img" and self._current is not None:
            self.sections[self._current]["images"].append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False
            self._current = self._title
            self.sections[self._title] = {"cells": [], "images": []}
        elif tag in ("td", "th"):
            self._in_cell = False
            if self._current is not None:
                self.sections[self._current]["cells"].append(self._cell)

    def handle_data(self, data):
        if self._in_h2:
            self._title += data
        elif self._in_cell:
            self._cell += data


@pytest.fixture
def filled(catalog, tmp_path):
    cat = catalog
    cat.insert("samples", [
        {"sample_id": f"src{i % 2}/{i}", "source": f"src{i % 2}", "item": str(i), "task": "qa" if i < 3 else "caption",
         "conversation": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}],
         "media_hashes": [f"m{i % 3}"], "stage_hints": ["2"], "content_sha256": str(i)} for i in range(5)])
    cat.insert("captions", [
        {"caption_id": f"c{i}", "media_hash": "m0", "kind": "image", "captioner": f"cap{i % 2}", "model_path": "/m",
         "backend": "transformers", "prompt_sha256": "p", "sampling": {}, "text": "a red circle " * (i + 1),
         "finish_reason": "stop", "n_tokens": 3 * (i + 1), "prompt_tokens": 10, "status": "ok"} for i in range(4)])
    cat.insert("ppl_scores", [
        {"sample_id": f"src{i % 2}/{i}", "scorer": "s", "template_version": "v1", "text_scope": "answer",
         "ppl": 2.0 + i, "mean_nll": 0.5, "n_tokens": 4, "backend": "transformers", "model_path": "/m"}
        for i in range(5)])
    cat.insert("dedup_decisions", [
        {"policy": "p", "sample_id": f"src{i % 2}/{i}", "source": f"src{i % 2}", "task": "qa", "group_key": "g",
         "group_size": 5, "rule": "keep_k_lowest", "k": 2, "rank": i + 1, "ppl": 2.0 + i, "kept": i < 2,
         "reason": "lowest_k" if i < 2 else "not_lowest_k", "seed": 0, "grouping": "exact", "scorer": "s",
         "template_version": "v1", "text_scope": "answer"} for i in range(5)])
    cat.insert("shards", [
        {"mixture": "demo", "stage": "2", "name": f"demo-{i}.tar", "path": f"/s/{i}", "sha256": "x",
         "n_samples": 3, "bytes": 1000 * (i + 1)} for i in range(3)])
    run_dir = tmp_path / "train"
    (run_dir / "stage1").mkdir(parents=True)
    (run_dir / "stage1" / "metrics.jsonl").write_text("".join(json.dumps(
        {"step": s, "loss": 3.0 - s * 0.1, "lr": {"ifa/decay": 1e-6, "projector/decay": 1e-5}}) + "\n"
        for s in range(1, 6)))
    cat.insert("train_stages", [{
        "run_dir": str(run_dir), "stage": "stage1", "spec_sha256": "h", "spec": {}, "init_from": "components",
        "export_path": str(run_dir / "stage1" / "export"), "world_size": 1, "steps": 5, "samples": 10,
        "final_loss": 2.5}])
    cat.insert("dpo_pair_sets", [{"pair_set_id": "ps", "checkpoint_path": "/ck", "checkpoint_sha256": "abcdef0123456789",
                                   "backend": "transformers", "judge": "policy", "config": {}, "seed": 0}])
    cat.insert("dpo_inputs", [
        {"pair_set_id": "ps", "sample_id": f"src0/{i}", "domain": ["qa", "image_caption", "video_caption"][i % 3],
         "n_pairs": 1 if i != 4 else 0, "reason": "paired" if i != 4 else "video_too_short"} for i in range(5)])
    cat.con.execute("CREATE TABLE IF NOT EXISTS evals (run_id TEXT, stage TEXT, checkpoint TEXT, task TEXT, "
                    "metric TEXT, value DOUBLE, samples INTEGER, created_at TIMESTAMP DEFAULT current_timestamp)")
    cat.insert("evals", [{"run_id": "r", "stage": st, "checkpoint": "/c", "task": "image_qa", "metric": "accuracy",
                          "value": v, "samples": 8} for st, v in [("stage1", 0.25), ("stage2", 0.5)]])
    cat.quarantine([{"source": "src0", "item": "bad.jpg", "reason": "truncated_image", "detail": "x"}])
    run_id = cat.start_run("end_to_end", {"seed": 0})
    cat.finish_run(run_id)
    return cat, run_id


def test_every_section_has_data_and_the_counts_of_its_rows(filled, tmp_path):
    cat, run_id = filled
    sections = build_sections(cat, RUN_REPORT)
    assert all(s.has_data for s in sections), [s.title for s in sections if not s.has_data]
    out = write_report(cat, run_id, tmp_path / "r.html")
    page = _Page()
    page.feed(out.read_text())
    titles = list(page.sections)
    assert len(titles) == len(sections)
    cells = {t: page.sections[t]["cells"] for t in titles}
    # composition: src0 has samples 0,2,4 -> qa {0,2}, caption {4}; src1: 1 (qa), 3 (caption)
    comp = cells["Source composition"]
    assert comp[3:6] == ["src0", "caption", "1"] and comp[6:9] == ["src0", "qa", "2"]
    # dedup: kept = rank 1, 2 -> samples 0 (src0) and 1 (src1)
    dd = cells["Deduplication: kept and dropped per source"]
    assert dd[3:9] == ["src0", "1", "2", "src1", "1", "1"]
    # shards: 3 shards, 9 samples, 6000 bytes
    assert cells["Shards"][7:14] == ["demo", "2", "3", "9", "6000", "1000", "3000"]
    # DPO: domains of inputs 0..4 cycle qa, image_caption, video_caption; input 4 (image_caption) is refused
    assert cells["DPO preference pairs"][6:24] == [
        "ps", "abcdef012345", "image_caption", "paired", "1", "1",
        "ps", "abcdef012345", "image_caption", "video_too_short", "1", "0",
        "ps", "abcdef012345", "qa", "paired", "2", "2"]
    # quarantine: one refused item of one source, at ingest
    assert cells["Quarantine"][4:] == ["ingest", "truncated_image", "1", "1"]
    # evaluation: Table-5 layout, stages as columns in training order
    assert cells["Evaluation per stage"][:8] == ["task", "metric", "stage1", "stage2", "samples",
                                                "image_qa", "accuracy", "0.25"]
    assert cells["Evaluation per stage"][8:10] == ["0.5", "8"]
    # training: one loss and one LR plot per stage; the LR plot has both module groups
    assert len(page.sections["Training: loss and learning rate per module group"]["images"]) == 2
    for title, sec in page.sections.items():
        for src in sec["images"]:
            assert src.startswith("data:image/png;base64,")
            assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert re.search(r"<code>" + re.escape(run_id) + "</code>", out.read_text())


def test_an_empty_catalog_says_so_instead_of_drawing(catalog):
    sections = build_sections(catalog, RUN_REPORT)
    assert not any(s.figures for s in sections)
    assert all(s.note for s in sections)


def test_unknown_run_is_a_clear_error(catalog):
    with pytest.raises(KeyError, match="not in the catalog"):
        resolve_run(catalog, "nope")


def test_a_report_written_during_its_run_says_so(catalog, tmp_path):
    """Flows write the report as their last step, while their run is still recorded as running."""
    run_id = catalog.start_run("end_to_end", {})
    page = write_report(catalog, run_id, tmp_path / "r.html").read_text()
    assert "running (the report was written before the run ended)" in page
    catalog.finish_run(run_id)
    page = write_report(catalog, run_id, tmp_path / "r.html").read_text()
    assert "<th>status</th><td>completed</td>" in page and "before the run ended" not in page
