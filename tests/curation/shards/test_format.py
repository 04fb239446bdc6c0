"""The shard record format read back by stock ``tarfile`` and ``webdataset``: member names, JSON, media bytes.

    pytest tests/curation/shards/test_format.py -q
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from curation.shards.format import answered, canonical_json, media_file, sample_key, sample_record
from curation.shards.writer import write_records


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_sample_key_is_readable_dot_free_and_unique_by_md5():
    sid = "vid/q0.mp4"
    assert sample_key(sid) == "vid_q0_mp4-" + hashlib.md5(sid.encode()).hexdigest()[:10]
    assert sample_key("a/b") != sample_key("a_b")  # same readable part, different ids


def test_one_member_rule_for_one_and_several_media(tmp_path):
    """A lone medium and the i-th of several are both KEY.<i>.<ext>; the JSON's media[i].file names it."""
    video = tmp_path / "clip.MP4"
    video.write_bytes(b"not decoded here" * 10)
    image = _png(20, 12)
    single = sample_record("img/c0", {"sample_id": "img/c0", "conversation": []},
                           [(image, "png", {"kind": "image", "media_hash": "h0"})])
    several = sample_record("mix/m0", {"sample_id": "mix/m0", "conversation": []},
                            [(image, "png", {"kind": "image", "media_hash": "h0"}),
                             (video, ".MP4", {"kind": "video", "media_hash": "h1"})])
    write_records([single, several], tmp_path / "out", prefix="t", max_samples=10, max_bytes=1 << 20)

    with tarfile.open(tmp_path / "out" / "t-000000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    k1, k2 = sample_key("img/c0"), sample_key("mix/m0")
    assert list(members) == [f"{k1}.json", f"{k1}.0.png", f"{k2}.json", f"{k2}.0.png", f"{k2}.1.mp4"]
    assert members[f"{k2}.1.mp4"] == video.read_bytes() and members[f"{k1}.0.png"] == image
    meta = json.loads(members[f"{k2}.json"])
    assert members[f"{k2}.json"] == json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    assert meta["media"] == [{"file": "0.png", "kind": "image", "media_hash": "h0"},
                             {"file": "1.mp4", "kind": "video", "media_hash": "h1"}]

    # stock webdataset: the key up to the first dot, members by suffix, images decoded by their last extension
    import webdataset as wds

    got = list(wds.WebDataset(str(tmp_path / "out" / "t-000000.tar"), shardshuffle=False,
                              empty_check=False).decode("pil"))
    assert [s["__key__"] for s in got] == [k1, k2]
    assert got[0]["0.png"].size == (20, 12) and got[1]["1.mp4"] == video.read_bytes()
    assert got[1]["json"]["media"][1]["file"] == "1.mp4"


def test_media_file_and_canonical_json():
    assert media_file(0, "JPG") == "0.jpg" and media_file(3, ".mp4") == "3.mp4"
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


def test_answered_appends_the_side():
    meta = {"conversation": [{"from": "human", "value": "<image>\nWhat?"}], "chosen": "A.", "rejected": "B."}
    assert answered(meta, "chosen") == [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A."}]
    assert answered(meta, "rejected")[-1] == {"from": "gpt", "value": "B."}
    with pytest.raises(KeyError):
        answered(meta, "neither")
