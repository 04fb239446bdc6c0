"""Media the model cannot encode, from ingest to a training step: they pass ingest (the catalog knows no model),
are refused at shard build with the model's patch rule (``model.preprocessing.check_encodable``), and the
remaining samples train.

    pytest tests/trainers/test_unusable_media.py -q
"""
from __future__ import annotations

import json
import math
import tarfile

import av
import numpy as np
import pytest
from PIL import Image

from core.catalog import Catalog
from curation.ingest import ingest
from curation.mixtures import MixtureConfig, select_mixture
from curation.shards.build import build_shards
from curation.sources import load_manifest
from trainers.spec import StageSpec
from trainers.stage import run_stage

PATCH = 16  # the tiny Mavors' patch (demo/tiny_models.py siglip_config)


def _image(path, w, h, seed):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _video(path, w, h, n=6, fps=4):
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), 30 * i, np.uint8), format="rgb24")
            frame.pts = i
            c.mux(s.encode(frame))
        c.mux(s.encode(None))


GOOD = {"img0": ("jpg", 64, 48), "img1": ("png", 32, 32), "img2": ("jpg", 16, 40), "vid0": ("mp4", 48, 32)}
TINY = {"px1": ("png", 1, 1, "image_too_small"), "px8": ("png", 8, 8, "image_too_small"),
        "wide": ("png", 4000, 3, "image_too_small"), "tall": ("png", 3, 4000, "image_too_small"),
        "vid8": ("mp4", 8, 8, "video_too_small")}


def test_unencodable_media_are_refused_at_shard_build_and_the_rest_trains_a_step(tiny_work, tmp_path):
    media = tmp_path / "src" / "media"
    media.mkdir(parents=True)
    rows = []
    for i, (item, (ext, w, h, *_)) in enumerate({**GOOD, **TINY}.items()):
        (_video if ext == "mp4" else _image)(media / f"{item}.{ext}", w, h, *([] if ext == "mp4" else [i]))
        rows.append({"id": item, "media": f"{item}.{ext}", "caption": f"A picture called {item}."})
    (tmp_path / "src" / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "src" / "src.yaml").write_text("name: mix\nmodality: mixed\ntask: caption\nformat: caption_jsonl\n"
                                               "path: captions.jsonl\nmedia_root: media\n")
    mixture = MixtureConfig.model_validate({"name": "tiny", "stages": {"1": [{"source": "mix", "count": "all"}]},
                                            "transcode": {"patch_size": PATCH}})
    with Catalog(tmp_path / "catalog.duckdb") as cat:
        ingest([load_manifest(tmp_path / "src" / "src.yaml")], cat, media_store=tmp_path / "store", workers=0)
        assert cat.scalar("SELECT count(*) FROM samples") == len(GOOD) + len(TINY)  # ingest cannot know the model
        select_mixture(cat, mixture)
        (build,) = build_shards(cat, mixture, tmp_path / "shards", parallel=False)
        refused = {r["item"]: (r["reason"], r["detail"]) for r in cat.query(
            "SELECT item, reason, detail FROM quarantine WHERE stage = 'shards'")}
    assert {k: v[0] for k, v in refused.items()} == {k: t[3] for k, t in TINY.items()}
    assert "4000x3 is smaller than one 16x16 patch" in refused["wide"][1]
    assert "8x8 frames are smaller than one 16x16 patch" in refused["vid8"][1]
    keys = set()
    for tar in build.out_dir.glob("*.tar"):
        with tarfile.open(tar) as t:
            keys |= {json.loads(t.extractfile(m).read())["item"] for m in t.getmembers() if m.name.endswith(".json")}
    assert keys == set(GOOD) and build.n_samples == len(GOOD)
    assert len(list((tmp_path / "shards" / ".media").rglob("*.mp4"))) == 1  # vid0's; no copy of the refused one

    spec = StageSpec.model_validate({
        "name": "tiny-media", "init": {"pretrained": "{work_dir}/models/mavors"}, "data": {"shards": str(build.out_dir)},
        "modules": {"ive": {"trainable": False}, "ifa": {"trainable": True}, "projector": {"trainable": True},
                    "llm": {"trainable": False}},
        "optim": {"lr": 1e-3}, "schedule": {"kind": "constant"}, "batch": {"global_size": 2, "micro_size": 2},
        "budget": {"steps": 1}, "checkpoint_every": 1})
    record = run_stage(spec, tmp_path / "run", tiny_work)
    metrics = [json.loads(x) for x in (tmp_path / "run" / "tiny-media" / "metrics.jsonl").read_text().splitlines()]
    assert record["steps"] == 1 and len(metrics) == 1 and math.isfinite(metrics[0]["loss"])
