"""Shard writer and loader throughput, each against a baseline measured in the same run.

    python benchmarks/shards.py                 # ~1-2 min on 2 cores
    python benchmarks/shards.py --mb 256 --samples 2000

1. Writer: :func:`curation.shards.writer.write_shard` (fixed headers, sha256 on the fly, fsync,
   rename) against plain ``tarfile`` writing the same members to the same disk (page cache
   only), and against plain ``tarfile`` followed by fsync and a sha256 of the file (the same
   guarantees, done one after the other). Reported as MB/s and ratios (target >= 0.9 vs
   plain). Runs alternate, best of ``--repeat``.
2. Loader: :class:`trainers.data.ShardLoader` samples/s with 1 and 2 DataLoader workers,
   against stock ``webdataset.WebDataset`` + the same decode in one process. Two decoders:
   a trivial one (pipeline overhead only) and the tiny ``MavorsProcessor`` (PNG decode,
   resize, tubelets, tokenization: the real per-sample work, at test-model sizes).
"""
from __future__ import annotations

import argparse
import io
import os
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from curation.media import file_sha256
from curation.shards.format import ShardRecord, sample_record
from curation.shards.writer import write_records, write_shard


def writer_bench(tmp: Path, total_mb: int, repeat: int) -> tuple[float, ...]:
    rng = np.random.default_rng(0)
    member = 512 * 1024
    records = [ShardRecord(f"s{i:05d}", {"sample_id": f"bench/{i}", "conversation": []},
                           [("bin", rng.bytes(member))]) for i in range(total_mb * 1024 * 1024 // member)]
    members = [m for r in records for m in r.members()]
    size = sum(len(c) for _, c in members)

    def plain(path: Path) -> None:
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for name, content in members:
                ti = tarfile.TarInfo(name)
                ti.size = len(content)
                tar.addfile(ti, io.BytesIO(content))

    def plain_durable(path: Path) -> None:
        """The same guarantees done the plain way: tarfile, then fsync, then sha256 of the file."""
        plain(path)
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        file_sha256(path)

    best = {"plain": float("inf"), "durable": float("inf"), "ours": float("inf"), "ours_nosync": float("inf")}
    for i in range(repeat):
        for name, fn in (("plain", plain), ("durable", plain_durable), ("ours", lambda p: write_shard(p, records)),
                         ("ours_nosync", lambda p: write_shard(p, records, durable=False))):
            path = tmp / f"{name}-{i}.tar"
            t = time.perf_counter()
            fn(path)
            best[name] = min(best[name], time.perf_counter() - t)
            path.unlink()
    return tuple(size / best[k] / 1e6 for k in ("plain", "durable", "ours", "ours_nosync"))


class TrivialProcessor:
    """Decode-free: token ids from the answer bytes; measures reading, shuffling, merging, collating."""

    def encode(self, conversation, media, *, name):
        import torch

        ids = torch.tensor(list(conversation[-1]["value"].encode()))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids,
                "media_bytes": torch.tensor([sum(len(m) for m in media)])}

    def collate(self, samples):
        import torch

        width = max(len(s["input_ids"]) for s in samples)
        return {k: torch.stack([torch.nn.functional.pad(s[k], (0, width - len(s[k]))) for s in samples])
                for k in ("input_ids", "attention_mask", "labels")}


def loader_shards(tmp: Path, n: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(1)
    recs = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(buf, format="PNG")
        recs.append(sample_record(f"bench/{i}", {
            "sample_id": f"bench/{i}",
            "conversation": [{"from": "human", "value": "<image>\nDescribe the image."},
                             {"from": "gpt", "value": f"Random noise number {i}, in many colours."}]},
            [(buf.getvalue(), "png", {"kind": "image"})]))
    write_records(recs, tmp / "loader", prefix="bench", max_samples=max(1, n // 8), max_bytes=1 << 30)
    return tmp / "loader"


def loader_rate(root: Path, processor, workers: int, n: int) -> float:
    """Samples/s over the first ``n`` samples, worker start-up included."""
    from trainers.data import build_loader

    loader = build_loader(root, processor, micro_size=8, seed=0, shuffle_window=64, num_workers=workers, max_epochs=1)
    t = time.perf_counter()
    seen = 0
    for batch in loader:
        seen += len(batch["sample_id"])
        if seen >= n:
            break
    return seen / (time.perf_counter() - t)


def stock_rate(root: Path, processor, n: int) -> float:
    """Stock webdataset reader + the same decode and collate, one process, first ``n`` samples."""
    import webdataset as wds

    from curation.shards.read import list_shards
    from trainers.data import collate, decode_sample

    t = time.perf_counter()
    batch = []
    for i, raw in enumerate(wds.WebDataset([s.url for s in list_shards(root)], shardshuffle=False,
                                           empty_check=False)):
        batch.append(decode_sample(raw, processor, dpo=False))
        if len(batch) == 8:
            collate(batch, processor, dpo=False)
            batch = []
        if i + 1 >= n:
            break
    return n / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=128, help="payload of the writer benchmark")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--samples", type=int, default=1600, help="samples in the loader benchmark's shards")
    p.add_argument("--mavors-samples", type=int, default=160, help="samples timed with the MavorsProcessor")
    p.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        tmp = Path(d)
        plain, durable, ours, nosync = writer_bench(tmp, a.mb, a.repeat)
        print(f"writer, {a.mb} MB in 512 KiB members (best of {a.repeat})")
        print(f"  {'plain tarfile (page cache only)':<40} {plain:8.1f} MB/s")
        print(f"  {'plain tarfile, then fsync + sha256 file':<40} {durable:8.1f} MB/s")
        print(f"  {'write_shard (sha256+fsync+rename)':<40} {ours:8.1f} MB/s   "
              f"ratio {ours / plain:.2f}x vs plain (target >= 0.9), {ours / durable:.2f}x vs plain+fsync+sha256")
        print(f"  {'write_shard(durable=False) (sha256)':<40} {nosync:8.1f} MB/s   ratio {nosync / plain:.2f}x vs plain")

        root = loader_shards(tmp, a.samples)
        import torch

        from model.processing import MavorsProcessor
        from demo.tiny_models import make_tokenizer

        mavors = MavorsProcessor(make_tokenizer(), frames_per_chunk=4, patch_size=16, image_size=64, max_sub_images=4)
        torch.set_num_threads(1)  # as in DataLoader workers: the baseline gets the same per-process threads
        print(f"loader: PNG 128x96 + conversation per sample, micro-batch 8, shuffle window 64, worker start included")
        print(f"  {'decoder (samples timed)':<26} {'stock wds 1 proc':>17} {'ours in-process':>16} {'ours 1 worker':>14}"
              f" {'ours 2 workers':>15}  samples/s")
        for name, proc, n in (("trivial", TrivialProcessor(), a.samples),
                              ("MavorsProcessor (tiny)", mavors, a.mavors_samples)):
            base = stock_rate(root, proc, n)
            zero, one, two = (loader_rate(root, proc, w, n) for w in (0, 1, 2))
            print(f"  {f'{name} ({n})':<26} {base:17.0f} {zero:16.0f} {one:14.0f} {two:15.0f}")
        print(f"(cpus: {os.cpu_count()}; load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
