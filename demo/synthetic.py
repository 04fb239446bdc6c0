"""Synthetic sources of any size over a small shared pool of media files: for scale benchmarks and tests of
memory bounds, where annotation rows, not media, must dominate.

    python -c "from demo.synthetic import write_sources; print(write_sources('/tmp/syn', 100_000))"

Two sources of ``n // 2`` rows each, written streaming (a file of 10^7 rows is never held in memory):

* ``syn_video_qa``: a LLaVA-Video-178K-style JSON list, ``{"id", "video", "conversations": [...]}``; a quarter
  of the items (LLaVA-OneVision multi-image style) show an ordered pair of pool images instead, so duplicate
  groups range from a few samples (image pairs) to many (videos);
* ``syn_captions``: a caption Parquet (``id``, ``media``, ``caption``) over the pool images.

Every ``DUPLICATE_EVERY``-th JSON item repeats the id of the item before it (refused at ingest as
``duplicate_item``). Media: ``images`` noise PNGs and ``videos`` short grainy clips (:mod:`demo.corpus` drawing), all distinct.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from demo.corpus import random_scene, write_video

DUPLICATE_EVERY = 1000
"""One JSON item in this many repeats its predecessor's id."""
VIDEO_QA, CAPTIONS = "syn_video_qa", "syn_captions"


@dataclass
class SyntheticSources:
    root: Path
    manifests: list[Path]
    rows: dict[str, int]  # source -> annotation rows written
    duplicates: int  # JSON rows that repeat an id


def write_media_pool(root: Path, images: int = 256, videos: int = 16, seed: int = 0) -> tuple[list[str], list[str]]:
    """``images`` 32x32 PNGs and ``videos`` 32x32 clips of 4 frames under ``root/pool``; their relative paths."""
    import numpy as np
    from PIL import Image

    rng = random.Random(seed)
    pixels = np.random.default_rng(seed)
    image_paths = [f"pool/i{i:04d}.png" for i in range(images)]
    video_paths = [f"pool/v{i:03d}.mp4" for i in range(videos)]
    (root / "pool").mkdir(parents=True, exist_ok=True)
    for rel in image_paths:  # noise pictures: every file distinct bytes
        if not (root / rel).exists():
            Image.fromarray(pixels.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / rel, format="PNG")
    for rel in video_paths:
        if not (root / rel).exists():
            write_video(root / rel, random_scene(rng), 32, 32, fps=4, n_frames=4, noise=8.0 + rng.random())
    return image_paths, video_paths


def write_sources(root: str | Path, n: int, *, images: int = 256, videos: int = 16, seed: int = 0,
                  batch: int = 100_000) -> SyntheticSources:
    """Write both sources (``n // 2`` rows each), their manifests and the media pool under ``root``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    image_paths, video_paths = write_media_pool(root, images, videos, seed)
    half = n // 2
    rng = random.Random(seed + 1)
    duplicates = 0
    with open(root / "video_qa.json", "w", encoding="utf-8") as f:
        f.write("[")
        for i in range(half):
            item = i - 1 if i % DUPLICATE_EVERY == DUPLICATE_EVERY - 1 else i
            duplicates += item != i
            q = rng.randrange(1000)
            if i % 4 == 3:
                a, b = rng.randrange(images), rng.randrange(images)
                rec = {"id": f"v{item:08d}", "image": [image_paths[a], image_paths[b]], "conversations": [
                    {"from": "human", "value": f"<image>\n<image>\nWhat differs between the pictures? ({q})"},
                    {"from": "gpt", "value": f"The second one is shape number {b} ({q})."}]}
            else:
                v = rng.randrange(videos)
                rec = {"id": f"v{item:08d}", "video": video_paths[v], "data_source": "synthetic", "conversations": [
                    {"from": "human", "value": f"<video>\nWhat happens in the clip? ({q})"},
                    {"from": "gpt", "value": f"Clip {v} shows a shape moving; question {q}."}]}
            f.write(("," if i else "") + json.dumps(rec))
        f.write("]")
    schema = pa.schema([("id", pa.string()), ("media", pa.string()), ("caption", pa.string())])
    with pq.ParquetWriter(root / "captions.parquet", schema) as writer:
        for start in range(0, half, batch):
            ids = range(start, min(half, start + batch))
            picks = [rng.randrange(images) for _ in ids]
            writer.write_table(pa.table({"id": [f"c{i:08d}" for i in ids], "media": [image_paths[p] for p in picks],
                                         "caption": [f"Picture {p}, caption {i}." for p, i in zip(picks, ids)]},
                                        schema=schema))
    manifests = []
    for name, modality, task, fmt, path in ((VIDEO_QA, "mixed", "qa", "llava_json", "video_qa.json"),
                                            (CAPTIONS, "image", "caption", "caption_parquet", "captions.parquet")):
        manifest = root / f"{name}.yaml"
        manifest.write_text(f"name: {name}\nmodality: {modality}\ntask: {task}\nformat: {fmt}\npath: {path}\n"
                            "stage_hints: ['1.5', '2']\n")
        manifests.append(manifest)
    return SyntheticSources(root, manifests, {VIDEO_QA: half, CAPTIONS: half}, duplicates)
