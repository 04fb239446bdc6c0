"""Mixture builds read back with stock readers (tarfile, webdataset, PyAV, PIL) and hashlib; crash + rerun.

    pytest tests/curation/shards/test_build_shards.py -q

(Named after :func:`curation.shards.build.build_shards`: ``test_build.py`` is the preference build's test, and
test modules here are imported by basename.)
"""
from __future__ import annotations

import collections
import hashlib
import io
import json
import math
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import av
from PIL import Image

from core.catalog import Catalog
from core.paths import MANIFESTS, REPO_ROOT
from curation.mixtures import select_mixture
import curation.shards.build as shards_build
from curation.shards.build import build_shards, recorded_stage_dirs, run_tasks
from curation.shards.verify import verify_shards
from curation.shards.writer import shard_name
from curation.transcode import TranscodeConfig, keyframe_indices, transcode_video
from shard_corpus import FPS, GOP, VIDEOS, build, fresh, make_video, mixture, shard_files, tar_samples

HERE = Path(__file__).parent

def test_build_every_sample_once_readable_and_checksummed(base_catalog, tmp_path):
    out = tmp_path / "shards"
    with fresh(base_catalog, tmp_path) as cat:
        builds = build(cat, out, parallel=False)
        folders = recorded_stage_dirs(cat)
        rows = cat.query("SELECT * FROM shards ORDER BY name")
        members = {(r["stage"], r["sample_id"]): r["shard"] for r in cat.query("SELECT * FROM mixture_members")}
        quarantined = cat.query("SELECT source, item, reason, stage FROM quarantine")
        conversations = {r["sample_id"]: json.loads(r["conversation"]) for r in cat.query("SELECT * FROM samples")}
        media_hashes = {r["sample_id"]: list(r["media_hashes"]) for r in cat.query("SELECT * FROM samples")}
        media_paths = {r["media_hash"]: r["storage_path"] for r in cat.query("SELECT * FROM media")}
    assert quarantined == [{"source": "bad", "item": "b0", "reason": "undecodable_video", "stage": "shards"}]
    by_stage = {b.stage: b for b in builds}
    assert set(by_stage) == {"1", "2"}
    # what a trainer is handed: the folder each stage was built into, <root>/<mixture>/s<stage>
    assert folders == {"tm": {"1": str((out / "tm" / "s1").resolve()), "2": str((out / "tm" / "s2").resolve())}}

    for stage, b in by_stage.items():
        expected = {sid for (st, sid) in members if st == stage} - {"bad/b0"}
        seen = collections.Counter()
        index = json.loads((b.out_dir / "index.json").read_text())
        assert index["n_samples"] == len(expected) and index["n_shards"] == len(index["shards"])
        for entry in index["shards"]:
            path = b.out_dir / entry["name"]
            data = path.read_bytes()
            row = next(r for r in rows if r["name"] == entry["name"])
            assert hashlib.sha256(data).hexdigest() == entry["sha256"] == row["sha256"]
            assert len(data) == entry["bytes"] == row["bytes"]
            samples = tar_samples(path)
            assert len(samples) == entry["n_samples"] == row["n_samples"] <= 3
            assert len(data) <= 40960 or len(samples) == 1
            with tarfile.open(path) as tar:
                assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in tar.getmembers()} == {(0, 0, 0, "", 0o444)}
            for key, files in samples.items():
                meta = json.loads(files["json"])
                seen[meta["sample_id"]] += 1
                assert members[(stage, meta["sample_id"])] == entry["name"]  # traces back to its mixture row
                assert meta["conversation"] == conversations[meta["sample_id"]]
                assert meta["mixture"] == "tm" and meta["stage"] == stage and meta["source"] in ("vid", "img")
                # one naming rule: the i-th medium (placeholder order) is KEY.<i>.<ext>, however many there are
                exts = [".mp4" if m["kind"] == "video" else Path(media_paths[m["media_hash"]]).suffix
                        for m in meta["media"]]
                assert [m["file"] for m in meta["media"]] == [f"{i}{ext}" for i, ext in enumerate(exts)]
                assert set(files) == {"json", *(m["file"] for m in meta["media"])}
                assert [m["media_hash"] for m in meta["media"]] == media_hashes[meta["sample_id"]]
                for m in meta["media"]:
                    assert hashlib.sha256(files[m["file"]]).hexdigest() == m["sha256"]
        assert set(seen) == expected and set(seen.values()) == {1}  # every selected sample exactly once

    # Stock webdataset reads the same samples; images decode with PIL, videos with PyAV at the fixed fps.
    import webdataset as wds

    urls = sorted(str(p) for p in (by_stage["2"].out_dir).glob("*.tar"))
    got = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert {json.loads(s["json"])["sample_id"] for s in got} == {s for (st, s) in members if st == "2"} - {"bad/b0"}
    source_frames = {f"vid/q{i}": VIDEOS[i % 4] for i in range(6)}
    for s in got:
        meta = json.loads(s["json"])
        if meta["source"] == "img":
            for m in meta["media"]:
                assert Image.open(io.BytesIO(s[m["file"]])).size == (m["width"], m["height"])
            continue
        _, n, fps, w, h = source_frames[meta["sample_id"]]
        with av.open(io.BytesIO(s["0.mp4"])) as c:
            st = c.streams.video[0]
            frames = list(c.decode(st))
            assert float(st.average_rate) == FPS
        assert len(frames) == math.ceil(n / fps * FPS) == meta["media"][0]["n_frames"]  # same duration, 4 fps
        assert [i for i, f in enumerate(frames) if f.key_frame] == list(range(0, len(frames), GOP))
        assert (frames[0].width, frames[0].height) == (w, h)
    assert verify_shards(out).ok


def test_same_seed_byte_identical_serial_and_ray(base_catalog, tmp_path, ray_local):
    with fresh(base_catalog, tmp_path, "a") as cat:
        build(cat, tmp_path / "a", parallel=False)
    with fresh(base_catalog, tmp_path, "b") as cat:
        build(cat, tmp_path / "b", parallel=True)  # Ray tasks, one per shard
        shutil.rmtree(tmp_path / "b" / ".media")  # a lost transcode cache is rebuilt, identically
        again = build_shards(cat, mixture(), tmp_path / "b", parallel=True)
    a, b = shard_files(tmp_path / "a"), shard_files(tmp_path / "b")
    assert a == b and len(a) >= 4
    assert all(not x.written and x.skipped for x in again)  # a rerun verifies and skips every shard
    for idx in (tmp_path / "a").rglob("index.json"):
        assert idx.read_bytes() == (tmp_path / "b" / idx.relative_to(tmp_path / "a")).read_bytes()


def test_plan_read_in_pages_smaller_than_a_shard_builds_the_same(base_catalog, tmp_path, monkeypatch):
    """The plan streams from its scratch file a page at a time: pages of 2 rows against shards of 3 samples
    (a record's shard decided across page ends) give the same tars, index and member rows as one page."""
    def built(name: str) -> tuple[dict, dict, list]:
        with fresh(base_catalog, tmp_path, name) as cat:
            build(cat, tmp_path / name, parallel=False)
            members = cat.query("SELECT stage, sample_id, shard FROM mixture_members ORDER BY ALL")
        index = {str(p.relative_to(tmp_path / name)): p.read_bytes() for p in (tmp_path / name).rglob("index.json")}
        return shard_files(tmp_path / name), index, members

    whole = built("whole")
    monkeypatch.setattr(shards_build, "PLAN_PAGE", 2)
    paged = built("paged")
    assert paged == whole and len(whole[0]) >= 4
    assert sum(r["shard"] is not None for r in paged[2]) == sum(n for n in _tar_counts(tmp_path / "paged"))
    assert not [p for p in tmp_path.rglob("*.parquet")]  # the plan's scratch files are gone


def _tar_counts(out: Path) -> list[int]:
    return [len(tar_samples(p)) for p in sorted(out.rglob("*.tar"))]


def test_run_tasks_pulls_a_stream_of_jobs_a_few_ahead_of_the_results(ray_local):
    """A generator of jobs is consumed as results come back: serially one at a time, on Ray at most two tasks
    per CPU ahead (2 CPUs here), never the whole stream up front; every result arrives once."""
    for parallel, ahead in ((False, 1), (True, 4)):
        pulled, results, lead = [0], [], []

        def jobs():
            for i in range(40):
                pulled[0] += 1
                yield "t", i

        def record(value: str) -> None:
            results.append(value)
            lead.append(pulled[0] - len(results))  # jobs taken from the stream and not yet returned

        run_tasks(shard_name, jobs(), parallel=parallel, ray_settings=None, on_result=record, label="t")
        expected = [f"t-{i:06d}.tar" for i in range(40)]  # independent of shard_name: its documented form
        assert sorted(results) == expected and (parallel or results == expected)
        assert max(lead) <= ahead


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import curation.shards.build as B
    import curation.shards.writer as S
    from core.catalog import Catalog
    from shard_corpus import build
    calls, writes = [0], [0]
    write_shard, original_write = S.write_shard, S._DurableFile.write
    def counting_write_shard(*a, **k):
        calls[0] += 1
        return write_shard(*a, **k)
    def write(self, b):  # die with SIGKILL a few writes into the third shard
        if calls[0] >= 3:
            writes[0] += 1
            if writes[0] > 4:
                os.kill(os.getpid(), signal.SIGKILL)
        return original_write(self, b)
    B.write_shard, S._DurableFile.write = counting_write_shard, write
    with Catalog({catalog!r}) as cat:
        build(cat, __import__("pathlib").Path({out!r}), parallel=False)
""")


def test_sigkill_mid_build_then_rerun_equals_uninterrupted(base_catalog, tmp_path):
    with fresh(base_catalog, tmp_path, "ref") as cat:
        build(cat, tmp_path / "ref", parallel=False)
    reference = shard_files(tmp_path / "ref")

    shutil.copy(base_catalog, tmp_path / "crash.duckdb")
    script = KILL_SCRIPT.format(tests=str(HERE), catalog=str(tmp_path / "crash.duckdb"),
                                out=str(tmp_path / "crash"))
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    partial = list((tmp_path / "crash").rglob(".*.partial"))
    done_before = shard_files(tmp_path / "crash")
    assert partial and 0 < len(done_before) < len(reference)
    # Also damage one finished shard: the rerun must notice by checksum and rewrite it.
    victim = tmp_path / "crash" / sorted(done_before)[0]
    data = bytearray(victim.read_bytes())
    data[700] ^= 0xFF
    victim.write_bytes(bytes(data))

    with Catalog(tmp_path / "crash.duckdb") as cat:
        builds = build(cat, tmp_path / "crash", parallel=False)
    assert shard_files(tmp_path / "crash") == reference
    assert not list((tmp_path / "crash").rglob(".*.partial"))
    rewritten = {n for b in builds for n in b.written}
    skipped = {n for b in builds for n in b.skipped}
    assert victim.name in rewritten and skipped and skipped.isdisjoint(rewritten)
    assert verify_shards(tmp_path / "crash").ok



def test_transcode_defaults_come_from_the_model_config(tmp_path):
    from model.configuration import MavorsConfig

    cfg = TranscodeConfig().resolved()
    assert (cfg.fps, cfg.gop) == (MavorsConfig().video_fps, MavorsConfig().frames_per_chunk)
    make_video(tmp_path / "in.mp4", 75, 25, 32, 24)  # 3 s
    info = transcode_video(tmp_path / "in.mp4", tmp_path / "out.mp4", TranscodeConfig(fps=8, gop=8))
    assert info.n_frames == 24 and keyframe_indices(tmp_path / "out.mp4") == [0, 8, 16]
    again = transcode_video(tmp_path / "in.mp4", tmp_path / "out2.mp4", TranscodeConfig(fps=8, gop=8))
    assert again.sha256 == info.sha256  # deterministic bytes


def test_demo_mixtures_over_the_demo_catalog(demo_catalog, tmp_path):
    """The shipped demo mixtures find every source they name in the ingested demo corpus and build cleanly."""
    from curation.mixtures import load_mixture

    shutil.copy(demo_catalog, tmp_path / "demo.duckdb")
    out = tmp_path / "shards"
    with Catalog(tmp_path / "demo.duckdb") as cat:
        for name in ("demo-stage1", "demo-stage2"):
            m = load_mixture(MANIFESTS / "mixtures" / f"{name}.yaml")
            selection = select_mixture(cat, m, strict=True)  # no source absent or short
            builds = build_shards(cat, m, out, parallel=False)
            refused = cat.scalar("SELECT count(*) FROM quarantine q JOIN mixture_members mm ON mm.mixture = ? "
                                 "AND mm.sample_id = q.source || '/' || q.item WHERE q.stage = 'shards'", [name])
            assert sum(b.n_samples for b in builds) == selection.n_selected - refused > 0
        recorded = {r["name"]: r["sha256"] for r in cat.query("SELECT name, sha256 FROM shards")}
        ingest_refused = cat.scalar("SELECT count(*) FROM mixture_members mm JOIN quarantine q "
                                    "ON mm.sample_id = q.source || '/' || q.item WHERE q.stage = 'ingest'")
    assert ingest_refused == 0  # samples the ingest refused are never drawn
    report = verify_shards(out, recorded=recorded)
    assert report.ok, report.problems
