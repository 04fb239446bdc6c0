"""``mavors dpo export --format parquet``: pair shards -> one Parquet file that stock ``datasets`` loads and TRL's
``maybe_apply_chat_template`` renders; images come back with the source's pixels, videos with its bytes (embedded,
or as an absolute path to a copy)."""
from __future__ import annotations

import av
import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from core.catalog import Catalog
from curation.preference.records import prompt_turns, write_pair_shards
from pipelines.cli import app, error_line

PAIRS = [  # (sample, domain, media kinds, question, chosen, rejected)
    ("a/img", "image_caption", ["image"], "Describe the image.", "A red square.", "A blue dog."),
    ("a/vid", "video_caption", ["video"], "Describe the clip.", "A dot moves right.", "Nothing happens."),
    ("a/txt", "qa", [], "Two plus two?", "Four.", "Five."),
]


@pytest.fixture
def pair_set(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    image = tmp_path / "img.png"
    Image.fromarray(pixels).save(image)
    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(8):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 30 * i, np.uint8), format="rgb24")))
        out.mux(stream.encode(None))
    files = {"image": image, "video": video}
    path = tmp_path / "catalog.duckdb"
    with Catalog(path) as cat:
        cat.insert("dpo_pair_sets", [{"pair_set_id": "ps", "checkpoint_path": "/ck", "checkpoint_sha256": "c",
                                      "backend": "mavors", "judge": "self", "config": {}, "seed": 0}])
        cat.insert("dpo_pairs", [{
            "pair_id": f"ps/{sid}/0", "pair_set_id": "ps", "sample_id": sid, "domain": domain,
            "prompt": prompt_turns(question, kinds), "chosen": chosen, "rejected": rejected,
            "chosen_candidate": "c0", "rejected_candidate": "c1", "chosen_score": 0.9, "rejected_score": 0.1,
            "margin": 0.8, "chosen_reason": "ranked", "rejected_reason": "ranked", "temperatures": {}, "seeds": {},
            "media_hashes": [f"h-{k}" for k in kinds], "media_kinds": kinds, "media_paths": [str(files[k]) for k in kinds],
            "checkpoint_sha256": "c"} for sid, domain, kinds, question, chosen, rejected in PAIRS])
        shards = write_pair_shards(cat, "ps", tmp_path / "shards", max_samples=8)
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"work_dir": str(tmp_path / "work"), "catalog_path": str(path)}))
    return {"settings": settings, "pixels": pixels, "video": video.read_bytes(), "shards": shards, "tmp": tmp_path}


def _export(ps, *args):
    return CliRunner().invoke(app, ["--config", str(ps["settings"]), "dpo", "export", *args])


def _load(path):
    import datasets

    return {r["meta"]["sample_id"]: r for r in datasets.load_dataset("parquet", data_files=str(path), split="train")}


def test_export_parquet_loads_with_datasets_and_renders_with_trl(pair_set, tiny_models):
    from transformers import AutoTokenizer
    from trl.data_utils import maybe_apply_chat_template

    out = pair_set["tmp"] / "out" / "pairs.parquet"
    result = _export(pair_set, "--format", "parquet", "--out", str(out))
    assert result.exit_code == 0, result.output
    rows = _load(out)
    assert sorted(rows) == ["a/img", "a/txt", "a/vid"]
    img = rows["a/img"]
    np.testing.assert_array_equal(np.asarray(img["images"][0].convert("RGB")), pair_set["pixels"])  # lossless PNG
    assert rows["a/vid"]["videos"] == [pair_set["video"]] and rows["a/vid"]["images"] == []
    assert rows["a/txt"]["images"] == [] and rows["a/txt"]["videos"] == []

    tok = AutoTokenizer.from_pretrained(tiny_models["mavors"])
    for sid, _, kinds, question, chosen, rejected in PAIRS:
        example = {k: rows[sid][k] for k in ("prompt", "chosen", "rejected")}
        rendered = maybe_apply_chat_template(example, tok)
        spans = "".join(f"<|vision_start|><|{k}_pad|><|vision_end|>" for k in kinds)
        assert rendered == {"prompt": f"<|im_start|>user\n{spans}{question}<|im_end|>\n<|im_start|>assistant\n",
                            "chosen": f"{chosen}<|im_end|>\n", "rejected": f"{rejected}<|im_end|>\n"}


def test_export_videos_as_absolute_paths_and_errors(pair_set):
    result = _export(pair_set, "ps", "--videos", "paths")  # default output under the work dir
    assert result.exit_code == 0, result.output
    out = pair_set["tmp"] / "work" / "dpo" / "ps" / "trl.parquet"
    [path] = _load(out)["a/vid"]["videos"]
    assert path.startswith("/") and open(path, "rb").read() == pair_set["video"]
    assert path == str(out.parent / "trl-videos" / "h-video.mp4")

    missing = _export(pair_set, "nope")
    assert missing.exit_code != 0 and error_line(missing.exception).startswith("pair set 'nope' is not in the catalog")
    wrong = _export(pair_set, "--format", "csv")
    assert wrong.exit_code != 0 and error_line(wrong.exception) == "--format csv: only parquet is supported"
