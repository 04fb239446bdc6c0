"""Shards through the stock Hugging Face ``webdataset`` builder, checked against plain ``tarfile``.

    pytest tests/curation/shards/test_hf.py -q
"""
from __future__ import annotations

import io
import json

import datasets
import numpy as np
import pytest
from PIL import Image

from curation.shards.format import ShardRecord
from curation.shards.hf import load_shards, shard_features
from curation.shards.read import list_shards
from curation.shards.writer import write_records
from shard_corpus import build, fresh, tar_samples


@pytest.fixture(scope="module")
def mixed_root(base_catalog, tmp_path_factory):
    """A mixture build (videos, PNG and JPEG images, a two-image sample) beside a folder of text-only records."""
    root = tmp_path_factory.mktemp("hf")
    with fresh(base_catalog, root) as cat:
        build(cat, root / "mix", parallel=False)
    text = [ShardRecord(f"t{i}", {"sample_id": f"text/{i}", "media": [], "source": "text", "conversation": [
        {"from": "human", "value": f"What is {i} + 1?"}, {"from": "gpt", "value": f"{i + 1}."}]}) for i in range(2)]
    write_records(text, root / "text", prefix="text", max_samples=5, max_bytes=1 << 20)
    return root


def test_stock_builder_alone_refuses_mixed_shards(mixed_root):
    """Why the features are needed: the builder infers them from 5 samples that must share members."""
    tars = [e.url for e in list_shards(mixed_root)]
    with pytest.raises(ValueError, match="same prefix or the same types"):
        datasets.load_dataset("webdataset", data_files={"train": tars}, split="train",
                              cache_dir=str(mixed_root / "hf-cache-stock"))


def test_load_shards_gives_every_record_with_its_members(mixed_root):
    ds = load_shards(mixed_root, cache_dir=str(mixed_root / "hf-cache"))
    want = {(entry.url, key): members for entry in list_shards(mixed_root)  # stages 1 and 2 share keys
            for key, members in tar_samples(entry.url).items()}
    assert len(ds) == len(want) == sum(e.n_samples for e in list_shards(mixed_root))
    suffixes = {s for members in want.values() for s in members if s != "json"}
    assert suffixes == {"0.mp4", "0.jpg", "0.png", "1.jpg"}  # every member kind the shards hold
    assert set(ds.column_names) == suffixes | {"json", "__key__", "__url__"}

    kinds = set()
    for row in ds:
        members = want[row["__url__"], row["__key__"]]
        meta = json.loads(members["json"])
        # every field of the record's JSON, nested ones included; fields only other records have come as None
        assert _subset(meta, row["json"]), row["__key__"]
        for suffix in suffixes:
            value = row[suffix]
            if suffix not in members:
                assert value is None
            elif suffix.endswith(".mp4"):
                assert value["bytes"] == members[suffix]
                kinds.add("video")
            else:
                stock = np.asarray(Image.open(io.BytesIO(members[suffix])))
                np.testing.assert_array_equal(np.asarray(value), stock)
                kinds.add("image")
        if not meta["media"]:
            kinds.add("text")
        if len(meta["media"]) > 1:
            kinds.add("multi-image")
    assert kinds == {"video", "image", "text", "multi-image"}

    streamed = list(load_shards(mixed_root, streaming=True))
    assert [(r["__url__"], r["__key__"]) for r in streamed] == list(zip(ds["__url__"], ds["__key__"]))


def test_features_union_of_every_record(mixed_root):
    features = shard_features([e.url for e in list_shards(mixed_root)])
    media = features["json"]["media"].feature
    assert {"fps", "n_frames", "width", "kind", "file"} <= set(media)  # video fields join the image entries
    assert isinstance(features["0.png"], datasets.Image) and isinstance(features["0.mp4"], datasets.Video)
    assert features["0.mp4"].decode is False
    with pytest.raises(ValueError, match="broken.tar: not a readable shard"):
        (mixed_root / "broken.tar").write_bytes(b"not a tar" * 100)
        shard_features([mixed_root / "broken.tar"])


def _subset(want, got) -> bool:
    """``want``'s fields all equal in ``got``, recursively (``got`` may have more fields, all None)."""
    if isinstance(want, dict):
        return isinstance(got, dict) and all(_subset(v, got.get(k)) for k, v in want.items()) and all(
            got[k] is None for k in got.keys() - want.keys())
    if isinstance(want, list):
        return isinstance(got, list) and len(want) == len(got) and all(_subset(a, b) for a, b in zip(want, got))
    return want == got
