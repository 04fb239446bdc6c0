"""The one shard reader against stock ``webdataset``: same samples, same members, same bytes; index listing.

    pytest tests/curation/shards/test_read.py -q
"""
from __future__ import annotations

import json

import pytest

from curation.shards.format import ShardRecord
from curation.shards.read import index_files, iter_samples, list_shards
from curation.shards.writer import write_records


@pytest.fixture
def two_folders(tmp_path):
    """Two shard folders under one root (7 and 3 records, several shards each), one to three media per record."""
    for part, n in (("a", 7), ("b", 3)):
        recs = [ShardRecord(f"{part}{i}", {"sample_id": f"{part}/{i}", "media": []},
                            [(f"{j}.bin", bytes([i, j]) * (100 * (i + 1))) for j in range(1 + i % 3)])
                for i in range(n)]
        write_records(recs, tmp_path / part, prefix=part, max_samples=3, max_bytes=1 << 20)
    return tmp_path


def test_list_shards_follows_the_index_files(two_folders):
    entries = list_shards(two_folders)
    assert [e.url.rsplit("/", 2)[-2:] for e in entries] == [
        ["a", "a-000000.tar"], ["a", "a-000001.tar"], ["a", "a-000002.tar"], ["b", "b-000000.tar"]]
    assert [e.n_samples for e in entries] == [3, 3, 1, 3]
    assert index_files(two_folders / "a") == [two_folders / "a" / "index.json"]
    # a folder that does not exist says so; one that exists without an index says there are no shards
    with pytest.raises(FileNotFoundError, match="nowhere: the folder does not exist$"):
        list_shards(two_folders / "nowhere")
    (two_folders / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no shards"):
        list_shards(two_folders / "empty")


def test_iter_samples_equals_stock_webdataset(two_folders):
    import webdataset as wds

    urls = [e.url for e in list_shards(two_folders)]
    ours = list(iter_samples(urls))
    stock = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert len(ours) == len(stock) == 10
    for a, b in zip(ours, stock):
        assert a["__key__"] == b["__key__"] and a["__url__"] == b["__url__"]
        assert {k: v for k, v in a.items() if not k.startswith("__")} == {
            k: v for k, v in b.items() if not k.startswith("__")}
    first = ours[4]  # a4: 4 % 3 = 1 -> two media
    assert json.loads(first["json"]) == {"sample_id": "a/4", "media": []}
    assert first["1.bin"] == bytes([4, 1]) * 500
