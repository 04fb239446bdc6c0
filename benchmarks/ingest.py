"""Benchmark: media hashed + probed per second, in-process and on Ray Data with 1 and 2 workers, vs `sha256sum`.

    python benchmarks/ingest.py                      # ~1 min on 2 cores
    python benchmarks/ingest.py --videos 48 --images 400 --keep /tmp/bench-media

`sha256sum` over the same files is the floor (bytes only, no decoding); the ratios show
what probing (Pillow full decode, PyAV demux + first/last frame) and Ray's scheduling add.
"""
from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from demo.corpus import IMAGE_SIZES, random_scene, write_image, write_video
from curation.ingest import probe_media
from curation.media import file_sha256
from core.settings import RaySettings


def make_files(root: Path, n_videos: int, n_images: int, seed: int = 0) -> list[tuple[str, str]]:
    """Videos 320x240, 3 s at 24 fps (h264), and JPEGs of the demo sizes scaled x4, with grain (realistic sizes).

    Files already there (``--keep`` of an earlier run) are reused.
    """
    rng = random.Random(seed)
    media = []
    for i in range(n_videos):
        path, scene = root / f"v{i:04d}.mp4", random_scene(rng)
        if not path.exists():
            write_video(path, scene, 320, 240, 24, 72, "h264", noise=12.0)
        media.append((str(path), "video"))
    for i in range(n_images):
        path, scene, (w, h) = root / f"i{i:04d}.jpg", random_scene(rng), rng.choice(IMAGE_SIZES)
        if not path.exists():
            write_image(path, scene, w * 4, h * 4, noise=12.0)
        media.append((str(path), "image"))
    return media


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--keep", type=Path, help="Write the files here and keep them (default: a temp folder).")
    args = ap.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="mavors-bench-ingest-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    media = make_files(root, args.videos, args.images)
    t_gen = time.perf_counter() - t0
    paths = [p for p, _ in media]
    total_mb = sum(Path(p).stat().st_size for p in paths) / 2**20
    print(f"{len(media)} files ({args.videos} videos 320x240x72 frames, {args.images} JPEGs), "
          f"{total_mb:.1f} MiB, generated in {t_gen:.1f} s")

    rows = [("sha256sum (coreutils)", timed(lambda: subprocess.run(["sha256sum", *paths], check=True,
                                                                    stdout=subprocess.DEVNULL)))]
    rows.append(("sha256 in Python, 1 MiB chunks", timed(lambda: [file_sha256(p) for p in paths])))
    rows.append(("hash + probe, in-process (--no-ray)", timed(lambda: probe_media(media, workers=0))))

    import ray

    from core.ray_runtime import ensure_ray

    t_ray = timed(lambda: ensure_ray(RaySettings(num_cpus=2, object_store_mb=256)))
    t_warm = timed(lambda: probe_media(media[:32], workers=2))  # both worker processes start and import
    for n in (1, 2):
        rows.append((f"hash + probe, Ray Data, {n} worker{'s' * (n > 1)}", timed(lambda: probe_media(media, workers=n))))
    ray.shutdown()

    base = rows[0][1]
    print(f"\nRay start {t_ray:.1f} s, first (warm-up) dataset on 32 files {t_warm:.1f} s — paid once per process\n")
    print(f"{'method':<40} {'seconds':>8} {'files/s':>9} {'MiB/s':>8} {'x sha256sum':>12}")
    for name, sec in rows:
        print(f"{name:<40} {sec:8.2f} {len(media) / sec:9.1f} {total_mb / sec:8.1f} {sec / base:12.1f}")
    if args.keep is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
