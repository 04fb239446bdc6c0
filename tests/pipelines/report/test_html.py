"""The run report page, on a hand-built catalog of an end-to-end run (with curate, train and DPO subflows), a
later unrelated training run and a failed run: only the run's rows (its subflows' included), a table of
contents whose links all land, every picture decodes, media shown as thumbnails and frame strips (a missing
file says so), warnings where the rows call for them, a catalog-wide section only labelled so, and the
status rewritten once the run has ended. Where a headless Chromium exists, the page is also opened in it:
every image loads and a screenshot is taken.

    pytest tests/pipelines/report/test_html.py -q
"""
from __future__ import annotations

import base64
import datetime as dt
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.runs import recorded_run
from pipelines.report.html import refresh_status, resolve_run, write_report
from pipelines.report.sections import RUN_REPORT, build_sections, evaluations, run_scope, training

COLOURS = [(230, 30, 30), (30, 200, 30), (30, 30, 230), (230, 230, 30)]


class _Page(HTMLParser):
    """Per <h2> section: its id, whether it carries the catalog-wide label, its text, cells and images; the
    table of contents' links."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.toc: list[str] = []
        self.images: list[tuple[str | None, dict]] = []
        self._section_id = self._current = None
        self._in_h2 = self._in_cell = self._in_nav = False
        self._text = self._cell = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "nav":
            self._in_nav = True
        elif tag == "a" and self._in_nav:
            self.toc.append(a["href"])
        elif tag == "section":
            self._section_id = a["id"]
        elif tag == "h2" and not self._in_nav:
            self._in_h2, self._title = True, ""
        elif tag == "span" and self._in_h2 and a.get("class") == "wide":
            self._wide = True
        elif tag in ("td", "th"):
            self._in_cell, self._cell = True, ""
        elif tag == "img":
            self.images.append((self._current, a))
            if self._current:
                self.sections[self._current]["images"].append(a)

    def handle_endtag(self, tag):
        if tag == "nav":
            self._in_nav = False
        elif tag == "h2" and self._in_h2:
            self._in_h2 = False
            self._current = self._title.replace("catalog-wide", "")
            self.sections[self._current] = {"id": self._section_id, "wide": getattr(self, "_wide", False),
                                            "cells": [], "images": [], "text": ""}
            self._wide = False
        elif tag in ("td", "th"):
            self._in_cell = False
            if self._current is not None:
                self.sections[self._current]["cells"].append(self._cell)

    def handle_data(self, data):
        if self._in_h2:
            self._title += data
        elif self._current is not None:
            self.sections[self._current]["text"] += data
            if self._in_cell:
                self._cell += data


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


def _video(path: Path, colours: list[tuple[int, int, int]], frames_each: int = 4) -> Path:
    """A 32x24 mpeg4 video, one flat colour per segment of ``frames_each`` frames."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for colour in colours:
            for _ in range(frames_each):
                frame = np.full((24, 32, 3), colour, np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _image(path: Path, colour) -> Path:
    Image.new("RGB", (40, 30), colour).save(path)
    return path


def _conv(q: str, a: str, tag: str = "<image>\n") -> list[dict]:
    return [{"from": "human", "value": f"{tag}{q}"}, {"from": "gpt", "value": a}]


def _metrics(run_dir: Path, stage: str, steps: int) -> None:
    (run_dir / stage).mkdir(parents=True)
    (run_dir / stage / "metrics.jsonl").write_text("".join(json.dumps(
        {"step": s, "loss": 3.0 - s * 0.1,
         "lr": {"llm/decay": 1e-5 * s / steps, "projector/decay": 1e-5 * s / steps, "ifa/decay": 2e-5}}) + "\n"
        for s in range(1, steps + 1)))


@pytest.fixture
def runs(catalog, tmp_path):
    """An end-to-end run E (curate C, train T, dpo D inside it), then an unrelated training run U and a failed
    run F. Rows are tagged with the run that wrote them; U's rows mirror E's names (a second demo-stage1)."""
    cat, media_dir = catalog, tmp_path / "media"
    media_dir.mkdir()
    red, blue = _image(media_dir / "red.png", COLOURS[0]), _image(media_dir / "blue.png", COLOURS[2])
    clip = _video(media_dir / "clip.mp4", COLOURS)
    shuffled = _video(media_dir / "clip-shuffled.mp4", [COLOURS[k] for k in (2, 0, 3, 1)])
    ids = {}
    with recorded_run(cat, "end_to_end") as e2e:
        with recorded_run(cat, "curate") as curate:
            pass
        with recorded_run(cat, "train") as train:
            pass
        with recorded_run(cat, "dpo_regenerate") as dpo:
            pass
    ids.update(E=e2e.run_id, C=curate.run_id, T=train.run_id, D=dpo.run_id)
    with recorded_run(cat, "train") as unrelated:
        pass
    ids["U"] = unrelated.run_id
    with pytest.raises(KeyError):
        with recorded_run(cat, "train", {"stages": ["nope"]}) as failed:
            raise KeyError("no stage spec nope.yaml")
    ids["F"] = failed.run_id
    C, U = ids["C"], ids["U"]
    cat.insert("sources", [{"name": n, "modality": m, "task": t, "format": "llava_json", "path": f"/d/{n}",
                            "run_id": r} for n, m, t, r in (("imgs", "image", "qa", C), ("vids", "video", "caption", C),
                                                           ("other", "image", "qa", U))])
    cat.insert("media", [
        {"media_hash": h, "kind": k, "bytes": 100, "width": 32, "height": 24, "n_frames": n, "codec": "x",
         "storage_path": str(p), "run_id": r}
        for h, k, n, p, r in (("hred", "image", 1, red, C), ("hblue", "image", 1, blue, C),
                              ("hclip", "video", 16, clip, C), ("hgone", "image", 1, media_dir / "gone.png", C),
                              ("hother", "image", 1, red, U))])
    cat.insert("samples", [
        {"sample_id": f"{src}/{item}", "source": src, "item": item, "task": task, "conversation": conv,
         "media_hashes": hashes, "content_sha256": item, "run_id": r}
        for src, item, task, conv, hashes, r in (
            ("imgs", "q0", "qa", _conv("What colour?", "Red."), ["hred"], C),
            ("imgs", "q1", "qa", _conv("Which colour?", "It is red."), ["hred"], C),
            ("imgs", "two", "qa", _conv("Compare.", "Red, then blue.", "<image><image>\n"), ["hred", "hblue"], C),
            ("imgs", "text", "qa", _conv("Two plus two?", "Four.", ""), [], C),
            ("imgs", "lost", "qa", _conv("What is it?", "Gone."), ["hgone"], C),
            ("vids", "c0", "caption", _conv("Describe.", "Colours change.", "<video>\n"), ["hclip"], C),
            ("other", "z9", "qa", _conv("Unrelated?", "Yes."), ["hother"], U))])
    cat.insert("captions", [
        {"caption_id": f"c{i}", "media_hash": "hclip", "kind": "video", "captioner": name, "model_path": "/m",
         "backend": "transformers", "prompt_sha256": "p", "sampling": {}, "text": f"{name} says colours " * 3,
         "finish_reason": "length", "n_tokens": 12, "prompt_tokens": 5, "status": "ok", "run_id": C}
        for i, name in enumerate(["capA", "capB"])])
    cat.insert("merged_captions", [{
        "merge_id": "m0", "media_hash": "hclip", "merger": "merger", "model_path": "/m", "prompt_sha256": "p",
        "sampling": {}, "raw_caption_ids": ["c0", "c1"], "text": "Four colours follow each other.",
        "reasoning": "Both agree on colours; capB adds nothing.", "finish_reason": "stop", "n_tokens": 6,
        "status": "ok", "run_id": C}])
    cat.insert("ppl_scores", [
        {"sample_id": sid, "scorer": "s", "template_version": "v1", "text_scope": "answer", "ppl": ppl,
         "mean_nll": 0.5, "n_tokens": 4, "backend": "transformers", "model_path": "/m", "run_id": r}
        for sid, ppl, r in (("imgs/q0", 2.0, C), ("imgs/q1", 5.0, C), ("other/z9", 9.0, U))])
    cat.insert("dedup_decisions", [
        {"policy": "p", "sample_id": sid, "source": "imgs", "task": "qa", "group_key": "hred", "group_size": 2,
         "rule": "keep_k_lowest", "k": 1, "rank": rank, "ppl": ppl, "kept": rank == 1,
         "reason": "lowest_k" if rank == 1 else "not_lowest_k", "seed": 0, "grouping": "exact", "scorer": "s",
         "template_version": "v1", "text_scope": "answer", "run_id": C}
        for sid, rank, ppl in (("imgs/q0", 1, 2.0), ("imgs/q1", 2, 5.0))])
    cat.insert("shards", [
        {"mixture": "demo", "stage": "2", "name": f"demo-{i}.tar", "path": f"/s/{i}", "sha256": "x",
         "n_samples": 3, "bytes": 1_000_000 * (i + 1), "run_id": C} for i in range(3)])
    for name, run_dir, r in (("E", tmp_path / "train" / "demo", ids["T"]), ("U", tmp_path / "train" / "later", U)):
        _metrics(run_dir, "demo-stage1", 6)
        cat.insert("train_stages", [{
            "run_dir": str(run_dir), "stage": "demo-stage1", "spec_sha256": name, "spec": {}, "init_from": "components",
            "export_path": str(run_dir / "demo-stage1" / "export"), "world_size": 1, "steps": 6, "samples": 12,
            "final_loss": 2.4, "started_at": dt.datetime(2026, 1, 1), "run_id": r}])
    cat.insert("train_stages", [{   # a stage whose metrics file is gone: a warning, not a silent gap
        "run_dir": str(tmp_path / "train" / "demo"), "stage": "demo-dpo", "spec_sha256": "d", "spec": {},
        "init_from": "demo-stage1", "export_path": "/x", "world_size": 1, "steps": 2, "samples": 4,
        "final_loss": 0.6, "started_at": dt.datetime(2026, 1, 2), "run_id": ids["T"]}])
    cat.insert("evals", [
        {"run_id": r, "stage": st, "checkpoint": "/c", "task": task, "metric": metric, "value": v, "samples": 8}
        for r, st, task, metric, v in (
            [(ids["T"], st, "heldout", "loss", v) for st, v in (("demo-stage1", 2.0), ("demo-dpo", 2.3))]
            + [(ids["T"], st, f"mavors_{t}", m, 0.1 * i + 0.05 * j)
               for i, t in enumerate(["image_qa", "image_caption", "video_qa", "video_caption"])
               for j, m in enumerate(["accuracy", "termination_rate", "brevity_rate"])
               for st in ("demo-stage1", "demo-dpo")]
            + [(U, "demo-stage1", "heldout", "loss", 7.0)])])
    D = ids["D"]
    cat.insert("dpo_pair_sets", [{"pair_set_id": "ps", "checkpoint_path": "/ck", "checkpoint_sha256": "abcdef0123456789",
                                   "backend": "mavors", "judge": "policy", "config": {}, "seed": 0, "run_id": D}])
    cat.insert("dpo_inputs", [
        {"pair_set_id": "ps", "sample_id": sid, "domain": dom, "n_pairs": n, "reason": reason, "extra": extra,
         "run_id": D}
        for sid, dom, n, reason, extra in (("imgs/q0", "qa", 1, "paired", None),
                                           ("vids/c0", "video_caption", 1, "paired", {"permutation": [2, 0, 3, 1]}),
                                           ("imgs/q1", "qa", 0, "no_valid_positive", None))])
    cat.insert("dpo_pairs", [{
        "pair_id": f"ps/{sid}/0", "pair_set_id": "ps", "sample_id": sid, "domain": dom,
        "prompt": [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": q}]}],
        "chosen": chosen, "rejected": rejected, "chosen_candidate": "a", "rejected_candidate": "b", "margin": 0.5,
        "chosen_reason": "correct", "rejected_reason": "wrong", "temperatures": {}, "seeds": {},
        "media_hashes": [h], "media_kinds": [kind], "media_paths": [str(p)], "rejected_media_path": rej,
        "checkpoint_sha256": "c", "run_id": D}
        for sid, dom, kind, h, p, q, chosen, rejected, rej in (
            ("imgs/q0", "qa", "image", "hred", red, "What colour?", "Red.", "Blue.", None),
            ("vids/c0", "video_caption", "video", "hclip", clip, "Describe.", "Red, green, blue, yellow.",
             "Blue, red, yellow, green.", str(shuffled)))])
    cat.quarantine([{"source": "imgs", "item": "bad.jpg", "reason": "truncated_image", "detail": "cut at 10 bytes",
                     "run_id": C},
                    {"source": "other", "item": "worse.jpg", "reason": "decompression_bomb", "detail": "x", "run_id": U}])
    return cat, ids


def test_the_report_is_the_runs_own(runs, tmp_path):
    cat, ids = runs
    assert set(run_scope(cat, ids["E"]).runs) == {ids[k] for k in "ECTD"}
    out = write_report(cat, ids["E"], tmp_path / "r.html")
    page = _parse(out)
    # table of contents: one link per section, every link lands on a section
    assert page.toc == [f"#{s['id']}" for s in page.sections.values() if s["id"]]
    assert len(page.toc) == len(RUN_REPORT)
    s = {t.split(":")[0].split(" (")[0]: v for t, v in page.sections.items()}
    # composition: the curate subflow's samples only (imgs: 5 qa, vids: 1 caption), not the unrelated run's
    assert s["Source composition"]["cells"][3:] == ["imgs", "qa", "5", "vids", "caption", "1"]
    # samples: each with its text, newest PPL and dedup verdict; the unrelated run's sample is not among them
    cells = s["Samples"]["cells"]
    k = cells.index("imgs/q1")
    assert cells[k:k + 6] == ["imgs/q1", "qa", "<image>\nWhich colour?", "It is red.", "5.0", "dropped (not_lowest_k)"]
    assert "imgs: 5 of 5 samples" in s["Samples"]["text"] and "other/z9" not in cells
    # training: one demo-stage1 row (the unrelated run's namesake is left out), and the missing metrics said
    training_cells = s["Training"]["cells"]
    assert training_cells[6::6] == ["demo-stage1", "demo-dpo"] and "later" not in s["Training"]["text"]
    assert "stage demo-dpo: no metrics at" in s["Training"]["text"]
    # evaluation: the unrelated run's loss 7.0 is not there; loss rose after demo-dpo
    assert "7.0" not in s["Evaluation per stage"]["cells"]
    assert "heldout: held-out loss rose after demo-dpo: 2.0000 (demo-stage1) -> 2.3000 (demo-dpo)" in \
        s["Evaluation per stage"]["text"]
    # quarantine: the run's refused file with its reason and detail; not the unrelated one
    assert ["ingest", "imgs", "bad.jpg", "truncated_image", "cut at 10 bytes"] == \
        s["Quarantine"]["cells"][-5:]
    assert "worse.jpg" not in s["Quarantine"]["text"]
    # captions: both captioners were cut every time; raw captions beside the merged one and its reasoning
    assert "all 1 of 1 captions of capA were cut at the token limit" in s["Caption lengths per captioner"]["text"]
    side = s["Captions side by side"]["text"]
    assert "capA says colours" in side and "capB says colours" in side
    assert "Four colours follow each other." in side and "Both agree on colours" in side
    # dedup group side by side: kept q0 (PPL 2.0) above dropped q1 (PPL 5.0), each with its media
    group = s["Deduplication"]["cells"]
    i = group.index("imgs/q0")
    assert group[i:i + 7] == ["imgs/q0", "<image>\nWhat colour?", "Red.", "2.0", "1", "kept", "lowest_k"]
    assert group[i + 8:i + 15] == ["imgs/q1", "<image>\nWhich colour?", "It is red.", "5.0", "2", "dropped",
                                   "not_lowest_k"]
    # DPO: chosen beside rejected, the video's shuffled segment order (1-based)
    dpo = s["DPO preference pairs"]["cells"]
    j = dpo.index("ps/vids/c0/0")
    assert dpo[j:j + 14] == [
        "ps/vids/c0/0", "Describe.", "chosen", "", "Red, green, blue, yellow.", "correct", "0.5",
        "", "", "rejected", "", "Blue, red, yellow, green.",
        "wrong; it saw the video shuffled, segments in order 3 1 4 2", ""]
    # the only catalog-wide section is labelled so, and the unrelated run's rows appear nowhere else
    for title, sec in page.sections.items():
        assert sec["wide"] == title.startswith("Catalog-wide"), title
        if not sec["wide"]:
            assert "other" not in sec["cells"] and "z9" not in sec["text"], title
    assert "other" in s["Catalog-wide totals"]["cells"]


def test_every_picture_decodes_and_media_show_as_thumbnails(runs, tmp_path):
    cat, ids = runs
    page = _parse(write_report(cat, ids["E"], tmp_path / "r.html"))
    decoded = []
    for section, img in page.images:
        kind, data = re.fullmatch(r"data:image/(png|jpeg);base64,(.+)", img["src"]).groups()
        picture = Image.open(io.BytesIO(base64.b64decode(data)))
        picture.load()
        decoded.append((section, img.get("class"), picture))
    thumbs = [(sec, p) for sec, cls, p in decoded if cls == "thumb"]
    samples = [p for sec, p in thumbs if sec == "Samples"]
    # imgs: q0, q1 (red), two (red + blue), lost (missing), text (none); vids: c0 (a strip)
    assert len(samples) == 5
    strip = next(p for p in samples if p.width > 2 * p.height)
    strip = np.asarray(strip.convert("RGB")).astype(int)
    width = (strip.shape[1] - 3 * 3) // 4  # four frames, 3 px apart
    centres = [strip[strip.shape[0] // 2, k * (width + 3) + width // 2] for k in range(4)]
    for got, want in zip(centres, COLOURS):  # each part of the clip, in order (JPEG keeps flat colours near)
        assert np.abs(got - np.array(want)).max() < 40, (got, want)
    assert "missing: " in page.sections["Samples"]["text"] and "gone.png" in page.sections["Samples"]["text"]
    shuffled = [p for sec, p in thumbs if sec == "DPO preference pairs" and p.width > 2 * p.height]
    assert len(shuffled) == 2  # the original and the shuffled video of the pair
    shuffled = np.asarray(shuffled[1].convert("RGB")).astype(int)
    centres = [shuffled[shuffled.shape[0] // 2, k * (width + 3) + width // 2] for k in range(4)]
    for got, k in zip(centres, (2, 0, 3, 1)):  # the rejected side shows the segments as shuffled
        assert np.abs(got - np.array(COLOURS[k])).max() < 40, (got, k)
    plots = [p for _, cls, p in decoded if cls == "plot"]
    assert len(plots) >= 8 and all(p.format == "PNG" for p in plots)


def test_plots_label_their_axes_and_keep_series_apart(runs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cat, ids = runs
    scope = run_scope(cat, ids["E"])
    loss, lr = training(cat, scope).figures
    fig, ax = plt.subplots()
    loss.draw(ax)
    fig.canvas.draw()
    assert ax.get_ylabel().startswith("loss") and ax.get_xlabel() == "step"
    assert all(float(t).is_integer() for t in ax.get_xticks())
    fig, ax = plt.subplots()
    lr.draw(ax)
    labels = sorted(line.get_label() for line in ax.get_lines())
    assert labels == ["ifa/decay", "llm/decay = projector/decay"]  # one line for two groups on one schedule
    assert ax.get_ylabel() == "learning rate"
    rates = [f for f in evaluations(cat, scope).figures if f.panels > 1]
    assert [(f.panels, f.grid) for f in rates] == [(4, (2, 2))]
    fig, axes = plt.subplots(2, 2)
    rates[0].draw(list(axes.flat))
    for a in axes.flat:
        colours = [line.get_color() for line in a.get_lines()]
        assert len(colours) == 3 == len(set(colours)) and a.get_ylabel() == "rate"
    plt.close("all")


def test_a_failed_run_says_so_and_shows_nothing_of_others(runs, tmp_path):
    cat, ids = runs
    assert resolve_run(cat, "latest")["run_id"] == ids["F"]  # the newest top-level run
    out = write_report(cat, ids["F"], tmp_path / "f.html")
    text = out.read_text()
    assert "run " + ids["F"] + " (train) failed: KeyError" in text
    page = _parse(out)
    for title, sec in page.sections.items():
        if not sec["wide"]:
            assert not sec["images"] and "this run wrote no" in sec["text"], title
    sections = build_sections(cat, RUN_REPORT, run_scope(cat, ids["F"]))
    assert [s.title for s in sections if s.has_data] == ["Catalog-wide totals (all runs, not only this one)"]


def test_an_empty_catalog_says_so_instead_of_drawing(catalog):
    sections = build_sections(catalog, RUN_REPORT)
    assert not any(s.figures for s in sections)
    assert all(s.note for s in sections)


def test_unknown_run_is_a_clear_error(catalog):
    with pytest.raises(KeyError, match="not in the catalog"):
        resolve_run(catalog, "nope")


def test_the_status_is_rewritten_when_the_run_ends(catalog, tmp_path):
    """Flows write the report as their last step, while their run is still recorded as running."""
    run_id = catalog.start_run("end_to_end", {})
    out = write_report(catalog, run_id, tmp_path / "r.html")
    before = out.read_text()
    assert "running (the report was written before the run ended)" in before
    catalog.finish_run(run_id)
    assert refresh_status(catalog, run_id, out)
    after = out.read_text()
    assert "<th>status</th><td>completed</td>" in after and "before the run ended" not in after
    assert after.split("<!-- /run -->")[1] == before.split("<!-- /run -->")[1]  # the sections are untouched
    assert not refresh_status(catalog, run_id, tmp_path / "none.html")


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium-headless-shell", "chromium", "chromium-browser",
                                                 "google-chrome")) if p), None)


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium on this machine "
                    "(apt-get install chromium-headless-shell; scripts/install.sh tries)")
def test_the_page_in_headless_chromium(runs, tmp_path):
    """Every image loads in a real browser (the DOM is dumped after a script counts the broken ones), and a
    screenshot of the top of the page is not blank."""
    cat, ids = runs
    out = write_report(cat, ids["E"], tmp_path / "r.html")
    probe = tmp_path / "probe.html"
    probe.write_text(out.read_text().replace("</body>", (
        "<script>window.addEventListener('load', () => {const imgs = [...document.images];"
        "document.title = 'images ' + imgs.length + ' broken ' + "
        "imgs.filter(i => !i.complete || i.naturalWidth === 0).length;});</script></body>")))
    flags = ["--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000"]
    dom = subprocess.run([_chromium(), *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    n_images = len(_parse(out).images)
    assert re.search(r"<title>images (\d+) broken (\d+)</title>", dom).groups() == (str(n_images), "0")
    shot = tmp_path / "top.png"
    subprocess.run([_chromium(), *flags, "--window-size=1280,2000", f"--screenshot={shot}", out.as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (2000, 1280) and pixels.std() > 10


def test_equal_evaluation_values_stay_visible(catalog):
    """Three metrics all at 0.0 at one stage: three markers side by side, each its own colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_id = catalog.start_run("train")
    catalog.insert("evals", [{"run_id": run_id, "stage": "s1", "checkpoint": "/c", "task": "mavors_image_qa",
                              "metric": m, "value": 0.0, "samples": 4} for m in ("accuracy", "brevity_rate", "exact_match")])
    [rates] = evaluations(catalog, run_scope(catalog, run_id)).figures
    fig, ax = plt.subplots()
    rates.draw(ax)
    points = {(line.get_xdata()[0], line.get_ydata()[0]) for line in ax.get_lines()}
    assert len(points) == 3 and {y for _, y in points} == {0.0}
    assert [t.get_text() for t in ax.get_xticklabels()] == ["s1"]
    plt.close(fig)
