"""The tar writer against plain ``tarfile`` (same bytes, predicted sizes), packing, and record sets with their index.

    pytest tests/curation/shards/test_writer.py -q
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import numpy as np

from curation.shards.format import ShardRecord
from curation.shards.writer import Packer, pack, record_tar_bytes, tar_bytes, write_records, write_shard


def test_writer_bytes_and_size_formula_match_tarfile(tmp_path):
    """write_shard writes exactly what plain tarfile writes; tar_bytes/record_tar_bytes predict its size."""
    rng = np.random.default_rng(0)
    recs = [ShardRecord(f"k{i}", {"i": i}, [("0.bin", rng.bytes(int(rng.integers(0, 3000))))]) for i in range(12)]
    with tarfile.open(tmp_path / "plain.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for r in recs:
            for name, content in r.members():
                ti = tarfile.TarInfo(name)
                ti.size, ti.mode = len(content), 0o444
                tar.addfile(ti, io.BytesIO(content))
    assert os.path.getsize(tmp_path / "plain.tar") == tar_bytes(sum(record_tar_bytes(r) for r in recs))
    info = write_shard(tmp_path / "ours.tar", recs)
    plain = (tmp_path / "plain.tar").read_bytes()
    assert (tmp_path / "ours.tar").read_bytes() == plain and info.sha256 == hashlib.sha256(plain).hexdigest()
    assert not list(tmp_path.glob(".*.partial"))  # renamed into place


def test_pack_bounds_by_count_and_bytes():
    assert pack([100, 100, 100, 100, 100], 2, 10 ** 6) == [range(0, 2), range(2, 4), range(4, 5)]
    # 512-byte header + 9728 data = 10240 per record; with the 1024 end blocks two records need 30720 bytes.
    assert pack([10240, 10240, 10240], 10, 30720) == [range(0, 2), range(2, 3)]
    assert pack([10 ** 6, 1], 10, 20480) == [range(0, 1), range(1, 2)]  # an oversized record gets a shard alone
    assert pack([], 2, 10 ** 6) == []


def test_packer_marks_each_record_that_opens_a_shard_as_the_stream_goes():
    packer = Packer(3, 30720)
    # 10240-byte records, two per 30720-byte shard (end blocks); the oversized one alone; then by count (3)
    opens = [packer.add(size) for size in (10240, 10240, 10240, 10 ** 6, 100, 100, 100, 100)]
    assert opens == [False, False, True, True, True, False, False, True]


def test_write_records_packs_in_order_and_indexes(tmp_path):
    """Records with arbitrary JSON and in-memory media, packed by count and bytes; index.json lists them."""
    recs = [ShardRecord(f"pair{i:02d}", {"n": i}, [("0.bin", bytes([i]) * (700 * i))]) for i in range(9)]
    infos = write_records(recs, tmp_path, prefix="pairs", max_samples=4, max_bytes=20480, index_header={"set": "x"})
    names = []
    for info in infos:
        with tarfile.open(tmp_path / info.name) as tar:
            names += [m.name for m in tar.getmembers()]
    assert names == [n for i in range(9) for n in (f"pair{i:02d}.json", f"pair{i:02d}.0.bin")]
    assert all(i.n_samples <= 4 and (i.bytes <= 20480 or i.n_samples == 1) for i in infos)
    assert [os.path.getsize(tmp_path / i.name) for i in infos] == [i.bytes for i in infos]
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["set"] == "x" and index["n_samples"] == 9 and index["n_shards"] == len(infos)
    assert [(e["name"], e["sha256"]) for e in index["shards"]] == [
        (i.name, hashlib.sha256((tmp_path / i.name).read_bytes()).hexdigest()) for i in infos]
    # the bytes are a function of the records
    again = write_records(recs, tmp_path / "again", prefix="pairs", max_samples=4, max_bytes=20480,
                          index_header={"set": "x"})
    assert [i.sha256 for i in again] == [i.sha256 for i in infos]
