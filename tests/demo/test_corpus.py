"""Demo corpus: deterministic, shaped like the paper's mixtures, videos decodable frame by frame as recorded.

    pytest tests/demo/test_corpus.py -q
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from demo.corpus import COLORS, DIRECTIONS, Scene, draw


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def truth(demo_corpus):
    return json.loads((demo_corpus / "corpus.json").read_text())


def test_same_seed_same_bytes_other_seed_other_media(demo_corpus, tmp_path):
    from typer.testing import CliRunner

    from pipelines.cli import app

    result = CliRunner().invoke(app, ["demo-data", str(tmp_path / "again"), "--seed", "0"])
    assert result.exit_code == 0, result.output
    assert file_hashes(tmp_path / "again") == file_hashes(demo_corpus)
    from demo.corpus import generate

    other = file_hashes(generate(tmp_path / "other", seed=1))
    same = file_hashes(demo_corpus)
    videos = [k for k in same if k.endswith(".mp4") and "bad_" not in k]
    assert all(other.get(k) != same[k] for k in videos)


def test_corpus_is_small_and_has_every_format(demo_corpus):
    size = sum(p.stat().st_size for p in demo_corpus.rglob("*") if p.is_file())
    assert size < 8 * 2**20
    import yaml

    formats = {yaml.safe_load(p.read_text())["format"] for p in (demo_corpus / "manifests").glob("*.yaml")}
    assert formats == {"llava_json", "caption_jsonl", "caption_parquet", "webdataset"}


def test_videos_decode_to_the_recorded_frames(demo_corpus, truth):
    """Decode every frame with PyAV; count, size and the drawn shape's colour at the middle frame match."""
    videos = {rel: t for rel, t in truth["media"].items() if t["kind"] == "video"}
    for rel, t in videos.items():
        with av.open(str(demo_corpus / rel)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(frames) == t["n_frames"], rel
        assert frames[0].shape == (t["height"], t["width"], 3), rel
    sizes = {(t["width"], t["height"]) for t in videos.values()}
    assert len(sizes) >= 4 and len({w / h for w, h in sizes}) >= 3  # varied resolution and aspect ratio
    assert len({t["fps"] for t in videos.values()}) >= 3
    assert {t["codec"] for t in videos.values()} == {"h264", "mpeg4"}
    assert sum(t["duration_s"] >= 2.0 for t in videos.values()) >= 4  # cut into 4 segments (DPO shuffles)
    assert max(t["n_frames"] for t in videos.values()) >= 160  # more than 10 chunks of 16 frames


def test_frames_show_what_the_text_says(demo_corpus, truth):
    """At the middle frame the shape sits at the centre and the corner is background: the answers name those colours."""
    def nearest(pixel):
        return min(COLORS, key=lambda n: np.abs(np.array(COLORS[n]) - pixel.astype(int)).sum())

    checked = 0
    for item in json.loads((demo_corpus / "video_qa" / "annotations.json").read_text()):
        rel = "video_qa/" + item["video"]
        if rel not in truth["media"]:
            continue  # planted bad files
        with av.open(str(demo_corpus / rel)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        mid = frames[(len(frames) - 1) // 2]  # t within one step of 0.5: the shape covers the centre
        h, w = mid.shape[:2]
        shape_color, background = nearest(mid[h // 2, w // 2]), nearest(mid[1, 1])
        for turn in item["conversations"]:
            if turn["from"] == "gpt" and "background" in turn["value"]:
                assert background in turn["value"], (rel, turn)
            elif turn["from"] == "gpt" and any(c in turn["value"] for c in COLORS):
                assert shape_color in turn["value"], (rel, turn)
                checked += 1
    assert checked >= 3


def test_draw_places_the_shape_on_its_path():
    s = Scene("square", "red", "blue", "left to right")
    f0, f1 = draw(s, 100, 50, 0.0), draw(s, 100, 50, 1.0)
    (x0, y0), (x1, y1) = DIRECTIONS["left to right"]
    assert tuple(f0[int(y0 * 50), int(x0 * 100)]) == COLORS["red"]
    assert tuple(f1[int(y1 * 50), int(x1 * 100)]) == COLORS["red"]
    assert tuple(f0[int(y1 * 50), int(x1 * 100)]) == COLORS["blue"]


def test_planted_duplicates_are_what_they_claim(demo_corpus):
    planted = json.loads((demo_corpus / "planted_duplicates.json").read_text())
    assert planted["exact"] and planted["near"]
    for group in planted["near"]:
        a, b = (demo_corpus / p for p in group["media"])
        assert a.read_bytes() != b.read_bytes()
        if a.suffix == ".jpg":
            ia = np.asarray(Image.open(a).convert("L").resize((16, 16)), dtype=float)
            ib = np.asarray(Image.open(b).convert("L").resize((16, 16)), dtype=float)
            assert np.abs(ia - ib).mean() < 12  # the same picture, resized and re-encoded
    copy = demo_corpus / "composite/media/copy_of_cap_05.jpg"
    assert copy.read_bytes() == (demo_corpus / "image_captions/images/cap_05.jpg").read_bytes()
