"""Shard builds read back with stock readers (tarfile, webdataset, PyAV, PIL) and hashlib; crash + rerun.

    pytest tests/test_shards.py -q
"""
from __future__ import annotations

import collections
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from core.paths import MANIFESTS, REPO_ROOT
from core.catalog import Catalog
from curation.mixtures import MixtureConfig, select_mixture
from curation.shards import ShardRecord, build_shards, pack, tar_bytes, verify_shards, write_records, write_shard
from curation.transcode import TranscodeConfig, keyframe_indices, transcode_video

FPS, GOP = 4.0, 4
# (name, frames, source fps, width, height): frame counts and rates chosen so fps conversion is non-trivial.
VIDEOS = [("v0", 30, 30, 64, 48), ("v1", 50, 25, 48, 64), ("v2", 20, 12, 40, 30), ("v3", 36, 24, 64, 36)]


def make_video(path: Path, n: int, fps: int, w: int, h: int) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            a = np.zeros((h, w, 3), np.uint8)
            a[:, : (i * 3) % w + 1, 0] = 200
            a[i % h, :, 1] = 255
            f = av.VideoFrame.from_ndarray(a, format="rgb24")
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode(None))


def make_image(path: Path, i: int) -> None:
    a = np.full((24 + i, 32, 3), (i * 30) % 255, np.uint8)
    Image.fromarray(a).save(path, format="PNG" if i % 3 == 0 else "JPEG")


@pytest.fixture(scope="module")
def base_catalog(tmp_path_factory) -> Path:
    """A catalog file with video, image, multi-image and broken-video samples (media on disk)."""
    root = tmp_path_factory.mktemp("corpus")
    media, samples = [], []

    def add_media(path: Path, kind: str, **meta) -> str:
        h = hashlib.sha256(path.read_bytes()).hexdigest()
        media.append({"media_hash": h, "kind": kind, "bytes": path.stat().st_size, "storage_path": str(path), **meta})
        return h

    vids = []
    for name, n, fps, w, h in VIDEOS:
        make_video(root / f"{name}.mp4", n, fps, w, h)
        vids.append(add_media(root / f"{name}.mp4", "video", fps=fps, n_frames=n, width=w, height=h))
    imgs = []
    for i in range(7):
        ext = "png" if i % 3 == 0 else "jpg"
        make_image(root / f"i{i}.{ext}", i)
        imgs.append(add_media(root / f"i{i}.{ext}", "image"))
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    broken = add_media(root / "broken.mp4", "video")

    def sample(source, item, task, hashes, placeholder):
        conv = [{"from": "human", "value": f"{placeholder * len(hashes)}\nWhat is in {item}?"},
                {"from": "gpt", "value": f"Answer about {item}."}]
        samples.append({"sample_id": f"{source}/{item}", "source": source, "item": item, "task": task,
                        "conversation": conv, "media_hashes": hashes, "content_sha256": item})

    for i in range(6):  # v0 is used twice: transcoded once
        sample("vid", f"q{i}", "qa", [vids[i % 4]], "<video>")
    for i in range(7):
        sample("img", f"c{i}", "caption", [imgs[i]], "<image>")
    sample("img", "multi", "qa", [imgs[1], imgs[2]], "<image>")
    sample("bad", "b0", "qa", [broken], "<video>")
    path = root / "catalog.duckdb"
    with Catalog(path) as cat:
        cat.insert("sources", [{"name": n, "modality": "video", "task": "qa", "format": "llava_json", "path": "x"}
                               for n in ("vid", "img", "bad")])
        cat.insert("media", media)
        cat.insert("samples", samples)
    return path


def mixture(**over) -> MixtureConfig:
    data = {"name": "tm", "seed": 5,
            "stages": {"2": [{"source": "vid", "count": "all"}, {"source": "img", "count": "all"},
                             {"source": "bad", "count": "all"}],
                       "1": [{"source": "img", "ratio": 0.5, "tasks": ["caption"]}]},
            "shards": {"max_samples": 3, "max_bytes": 40960},
            "transcode": {"fps": FPS, "gop": GOP}}
    data.update(over)
    return MixtureConfig.model_validate(data)


def fresh(base: Path, tmp_path: Path, name: str = "cat") -> Catalog:
    shutil.copy(base, tmp_path / f"{name}.duckdb")
    return Catalog(tmp_path / f"{name}.duckdb")


def build(cat: Catalog, out: Path, **kw):
    m = mixture()
    select_mixture(cat, m)
    return build_shards(cat, m, out, **kw)


def tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    """key -> {suffix: bytes} read with plain tarfile (independent of the writer's own reader)."""
    out: dict[str, dict[str, bytes]] = collections.defaultdict(dict)
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, suffix = m.name.split(".", 1)
            out[key][suffix] = tar.extractfile(m).read()
    return out


def shard_files(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*.tar"))}


def test_build_every_sample_once_readable_and_checksummed(base_catalog, tmp_path):
    out = tmp_path / "shards"
    with fresh(base_catalog, tmp_path) as cat:
        builds = build(cat, out, parallel=False)
        rows = cat.query("SELECT * FROM shards ORDER BY name")
        members = {(r["stage"], r["sample_id"]): r["shard"] for r in cat.query("SELECT * FROM mixture_members")}
        quarantined = cat.query("SELECT source, item, reason, stage FROM quarantine")
        conversations = {r["sample_id"]: json.loads(r["conversation"]) for r in cat.query("SELECT * FROM samples")}
    assert quarantined == [{"source": "bad", "item": "b0", "reason": "undecodable_video", "stage": "shards"}]
    by_stage = {b.stage: b for b in builds}
    assert set(by_stage) == {"1", "2"}

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
                assert [m["file"] for m in meta["media"]] == sorted(set(files) - {"json"}, key=lambda s: s[:1])
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
        with av.open(io.BytesIO(s["mp4"])) as c:
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


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import curation.shards as S
    from core.catalog import Catalog
    from test_shards import build
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
    S.write_shard, S._DurableFile.write = counting_write_shard, write
    with Catalog({catalog!r}) as cat:
        build(cat, __import__("pathlib").Path({out!r}), parallel=False)
""")


def test_sigkill_mid_build_then_rerun_equals_uninterrupted(base_catalog, tmp_path):
    with fresh(base_catalog, tmp_path, "ref") as cat:
        build(cat, tmp_path / "ref", parallel=False)
    reference = shard_files(tmp_path / "ref")

    shutil.copy(base_catalog, tmp_path / "crash.duckdb")
    script = KILL_SCRIPT.format(tests=str(REPO_ROOT / "tests"), catalog=str(tmp_path / "crash.duckdb"),
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


def test_verify_names_the_shard_with_a_flipped_byte(base_catalog, tmp_path):
    out = tmp_path / "s"
    with fresh(base_catalog, tmp_path) as cat:
        build(cat, out, parallel=False, stages=["2"])
    target = sorted((out / "tm" / "s2").glob("*.tar"))[1]
    data = bytearray(target.read_bytes())
    data[len(data) // 3] ^= 0x01
    target.write_bytes(bytes(data))
    report = verify_shards(out)
    assert not report.ok and all(target.name in p for p in report.problems)
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "shards", "verify", str(out), "--no-decode"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and f"shard {target.name}: sha256" in proc.stdout


def test_write_records_generic_fields_and_media(tmp_path):
    """Records with arbitrary JSON (DPO pairs) and in-memory media, packed by count and bytes."""
    recs = [ShardRecord(f"pair{i:02d}", {"prompt": [{"role": "user", "content": "hi"}], "chosen": "a" * i,
                                         "rejected": "b", "images": ["image0.jpg"], "meta": {"n": i}},
                        [("image0.jpg", bytes([i]) * (700 * i))]) for i in range(9)]
    infos = write_records(recs, tmp_path, prefix="pairs", max_samples=4, max_bytes=20480)
    import webdataset as wds

    got = list(wds.WebDataset([str(tmp_path / i.name) for i in infos], shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in got] == [r.key for r in recs]
    assert [json.loads(s["json"])["meta"]["n"] for s in got] == list(range(9))
    assert all(s["image0.jpg"] == bytes([i]) * (700 * i) for i, s in enumerate(got))
    assert all(i.n_samples <= 4 and (i.bytes <= 20480 or i.n_samples == 1) for i in infos)
    assert [os.path.getsize(tmp_path / i.name) for i in infos] == [i.bytes for i in infos]
    again = write_records(recs, tmp_path, prefix="pairs", max_samples=4, max_bytes=20480,
                          completed={i.name: i.sha256 for i in infos})
    assert again == infos
    # A webdataset-style dict (what the DPO area builds per pair) round-trips through ShardRecord.from_sample.
    copy = [ShardRecord.from_sample(s) for s in got]
    assert write_records(copy, tmp_path / "copy", prefix="pairs", max_samples=4, max_bytes=20480) == [
        type(i)(i.name, str(tmp_path / "copy" / i.name), i.sha256, i.n_samples, i.bytes) for i in infos]


def test_writer_bytes_and_size_formula_match_tarfile(tmp_path):
    """write_shard writes exactly what plain tarfile writes; tar_bytes/ShardRecord.tar_bytes predict its size."""
    rng = np.random.default_rng(0)
    recs = [ShardRecord(f"k{i}", {"i": i}, [("bin", rng.bytes(int(rng.integers(0, 3000))))]) for i in range(12)]
    with tarfile.open(tmp_path / "plain.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for r in recs:
            for name, content in r.members():
                ti = tarfile.TarInfo(name)
                ti.size, ti.mode = len(content), 0o444
                tar.addfile(ti, io.BytesIO(content))
    assert os.path.getsize(tmp_path / "plain.tar") == tar_bytes(sum(r.tar_bytes() for r in recs))
    info = write_shard(tmp_path / "ours.tar", recs)
    plain = (tmp_path / "plain.tar").read_bytes()
    assert (tmp_path / "ours.tar").read_bytes() == plain and info.sha256 == hashlib.sha256(plain).hexdigest()
    assert pack([100, 100, 100, 100, 100], 2, 10 ** 6) == [range(0, 2), range(2, 4), range(4, 5)]
    # 512-byte header + 9728 data = 10240 per record; with the 1024 end blocks two records need 30720 bytes.
    assert pack([10240, 10240, 10240], 10, 30720) == [range(0, 2), range(2, 3)]
    assert pack([10 ** 6, 1], 10, 20480) == [range(0, 1), range(1, 2)]


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
