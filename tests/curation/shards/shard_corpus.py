"""The shard tests' corpus: a catalog of videos, images, a multi-image and a broken-video sample, and helpers.

Imported by the tests of :mod:`curation.shards` (``from shard_corpus import ...``); the catalog
itself is the ``base_catalog`` fixture of this folder's conftest.
"""
from __future__ import annotations

import collections
import hashlib
import shutil
import tarfile
from pathlib import Path

import av
import numpy as np
from PIL import Image

from core.catalog import Catalog
from curation.mixtures import MixtureConfig, select_mixture
from curation.shards.build import build_shards

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


def make_base_catalog(root: Path) -> Path:
    """A catalog file with video, image, multi-image and broken-video samples (media on disk under ``root``).

    The catalog lives in ``root/catalog/``, so the media are outside its folder and stored as absolute paths:
    tests copy the file to other folders (``fresh``), which keeps such paths valid."""
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
    path = root / "catalog" / "catalog.duckdb"
    path.parent.mkdir()
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


def catalog_tables(cat: Catalog, out: Path) -> dict[str, list[tuple]]:
    """Every table a shard build writes, as sorted rows; paths relative to the shard root ``out``, run ids
    and times left out (they differ between any two runs)."""
    def rel(stored: str) -> str:  # images go into shards from where ingest found them
        path = cat.resolved(stored)
        return str(path.relative_to(out)) if path.is_relative_to(out) else str(path)

    return {
        "shards": sorted((r["mixture"], r["stage"], r["name"], rel(r["path"]), r["sha256"], r["n_samples"],
                          r["bytes"], r["plan_sha256"]) for r in cat.query("SELECT * FROM shards")),
        "mixture_members": sorted(tuple(r.values()) for r in cat.query("SELECT * FROM mixture_members")),
        "mixture_sources": sorted(tuple(map(str, r.values())) for r in cat.query("SELECT * FROM mixture_sources")),
        "shard_media": sorted((r["media_hash"], r["profile"], rel(r["path"]), r["ext"], r["sha256"], r["bytes"],
                               r["kind"], r["width"], r["height"], r["fps"], r["n_frames"], r["duration_s"], r["codec"])
                              for r in cat.query("SELECT * FROM shard_media")),
        "quarantine": sorted((r["source"], r["item"], r["reason"], r["stage"], r["detail"])
                             for r in cat.query("SELECT * FROM quarantine")),
    }
