"""``mavors shards verify``: a flipped byte, a misnamed or unlisted member, a duplicate record are each named.

    pytest tests/curation/shards/test_verify.py -q
"""
from __future__ import annotations

import subprocess
import sys

from core.paths import REPO_ROOT
from curation.shards.format import ShardRecord, sample_record
from curation.shards.verify import verify_shards
from curation.shards.writer import write_index, write_records, write_shard
from shard_corpus import build, fresh


def test_verify_names_the_shard_with_a_flipped_byte(base_catalog, tmp_path):
    out = tmp_path / "s"
    with fresh(base_catalog, tmp_path) as cat:
        build(cat, out, parallel=False, stages=["2"])
    assert verify_shards(out).ok
    target = sorted((out / "tm" / "s2").glob("*.tar"))[1]
    data = bytearray(target.read_bytes())
    data[len(data) // 3] ^= 0x01
    target.write_bytes(bytes(data))
    report = verify_shards(out)
    assert not report.ok and all(target.name in p for p in report.problems)
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "shards", "verify", str(out), "--no-decode"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and f"shard {target.name}: sha256" in proc.stdout


def test_verify_checks_the_record_format(tmp_path):
    good = sample_record("s/0", {"sample_id": "s/0", "conversation": []}, [(b"x" * 10, "bin", {"kind": "other"})])
    misnamed = ShardRecord("k1", {"sample_id": "s/1", "media": [{"file": "bin", "kind": "other"}]}, [("bin", b"y")])
    unlisted = ShardRecord("k2", {"sample_id": "s/2", "media": []}, [("0.bin", b"z")])
    write_records([good, misnamed, unlisted], tmp_path / "a", prefix="a", max_samples=10, max_bytes=1 << 20)
    report = verify_shards(tmp_path / "a", decode=False)
    assert report.n_samples == 3 and len(report.problems) == 2, report.problems
    assert "sample s/1 medium 0 is named .bin (expected .0.bin)" in report.problems[0]
    assert "sample s/2 has members its JSON does not list: ['0.bin']" in report.problems[1]
    # the same record in two shards of one folder
    infos = [write_shard(tmp_path / "b" / f"b-{i:06d}.tar", [good]) for i in range(2)]
    write_index(tmp_path / "b", infos)
    assert verify_shards(tmp_path / "b", decode=False).problems == [
        "shard b-000001.tar: sample s/0 also in shard b-000000.tar"]
