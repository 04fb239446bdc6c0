"""Preference records in TRL's format: catalog rows, WebDataset samples, and a ``datasets`` loader.

TRL's DPO trainer reads conversational preference rows with the columns ``prompt``,
``chosen``, ``rejected`` and, for vision models, ``images`` (a list of images whose
``{"type": "image"}`` placeholders appear in the prompt)::

    {"prompt":   [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe ..."}]}],
     "chosen":   [{"role": "assistant", "content": [{"type": "text", "text": "A red circle ..."}]}],
     "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "A circle."}]}],
     "images":   [<PIL.Image>]}

Videos follow the same pattern (``{"type": "video"}`` placeholders, a ``videos`` column
of encoded video bytes). In a shard (written by :func:`curation.shards.write_records`),
one pair is one sample: ``<key>.json`` holds the record (media named by tar member:
``"images": ["<key>.image0.jpg"]``) plus provenance under ``"meta"``, and the media travel
beside it as ``<key>.image0.jpg`` / ``<key>.video0.mp4``.

    python -c "from curation.preference.records import load_preference_dataset as l; print(l(['x.tar']))"
"""
from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from curation.preference.decisions import DOMAINS, Outcome

def trl_prompt(question: str, media_kinds: Iterable[str]) -> list[dict[str, Any]]:
    """TRL's conversational prompt: one user turn, media placeholders first, then the question."""
    content: list[dict[str, Any]] = [{"type": kind} for kind in media_kinds]
    return [{"role": "user", "content": content + [{"type": "text", "text": question}]}]


def trl_answer(text: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def pair_rows(set_id: str, outcome: Outcome, checkpoint_hash: str, run_id: str | None) -> list[dict[str, Any]]:
    """``dpo_pairs`` rows of one decided input."""
    inp = outcome.input
    rows = []
    for n, pair in enumerate(outcome.pairs):
        c, r = pair.chosen, pair.rejected
        rows.append({
            "pair_id": f"{set_id}/{inp.sample_id}/{n}", "pair_set_id": set_id, "sample_id": inp.sample_id,
            "domain": inp.domain, "prompt": trl_prompt(inp.question, [k for k, _ in inp.media]),
            "chosen": c.text, "rejected": r.text, "chosen_candidate": c.candidate_id,
            "rejected_candidate": r.candidate_id, "chosen_score": c.score, "rejected_score": r.score,
            "margin": pair.margin, "chosen_reason": c.reason, "rejected_reason": r.reason,
            "temperatures": {"chosen": c.temperature, "rejected": r.temperature},
            "seeds": {"chosen": c.seed, "rejected": r.seed}, "judge": c.judge or r.judge,
            "media_hashes": inp.media_hashes, "media_kinds": [k for k, _ in inp.media],
            "media_paths": [p for _, p in inp.media],
            "rejected_media_path": outcome.audit_path if inp.domain == "video_caption" else None,
            "checkpoint_sha256": checkpoint_hash, "run_id": run_id,
        })
    return rows


def shard_record(row: dict[str, Any]):
    """One ``dpo_pairs`` row as a :class:`curation.shards.ShardRecord`: the TRL JSON plus its media files."""
    from curation.shards import ShardRecord, sample_key

    prompt = json.loads(row["prompt"]) if isinstance(row["prompt"], str) else row["prompt"]
    files: list[tuple[str, str]] = []
    names: dict[str, list[str]] = {"image": [], "video": []}
    key = sample_key(row["pair_id"])
    for kind, path in zip(row["media_kinds"], row["media_paths"]):
        ext = Path(path).suffix.lower().lstrip(".") or ("jpg" if kind == "image" else "mp4")
        suffix = f"{kind}{len(names[kind])}.{ext}"
        names[kind].append(f"{key}.{suffix}")
        files.append((suffix, path))
    meta = {k: row[k] for k in ("pair_id", "pair_set_id", "sample_id", "domain", "chosen_score", "rejected_score",
                                "margin", "chosen_reason", "rejected_reason", "judge", "checkpoint_sha256",
                                "media_hashes", "rejected_media_path")}
    for k in ("temperatures", "seeds"):
        meta[k] = json.loads(row[k]) if isinstance(row[k], str) else row[k]
    record = {"prompt": prompt, "chosen": trl_answer(row["chosen"]), "rejected": trl_answer(row["rejected"]),
              "images": names["image"], "videos": names["video"], "meta": meta}
    return ShardRecord(key, record, files)


def write_pair_shards(cat, set_id: str, out_dir: Path, *, max_samples: int, max_bytes: int = 512 << 20,
                      run_id: str | None = None) -> list[str]:
    """Shard every pair of the set, one folder per domain (``<out_dir>/<domain>/dpo-<domain>-NNNNNN.tar``).

    Shards are recorded in the ``shards`` table under record set ``dpo/<set_id>``. A
    domain whose recorded shards still match their checksums and hold exactly its
    current pairs is left alone; otherwise it is rewritten (pairs in ``pair_id`` order,
    so the bytes are a function of the pairs).
    """
    from curation.shards import record_shard, write_records
    from curation.transcode import file_sha256

    record_set = f"dpo/{set_id}"
    paths = []
    for domain in DOMAINS:
        rows = cat.query("SELECT * FROM dpo_pairs WHERE pair_set_id = ? AND domain = ? ORDER BY pair_id",
                         [set_id, domain])
        stage = f"dpo-{domain}"
        recorded = cat.query("SELECT name, path, sha256, n_samples FROM shards WHERE mixture = ? AND stage = ?",
                             [record_set, stage])
        if recorded and sum(r["n_samples"] for r in recorded) == len(rows) and all(
                Path(r["path"]).exists() and file_sha256(r["path"]) == r["sha256"] for r in recorded):
            paths += sorted(r["path"] for r in recorded)
            continue
        infos = write_records([shard_record(r) for r in rows], out_dir / domain, prefix=f"dpo-{domain}",
                              max_samples=max_samples, max_bytes=max_bytes,
                              index_header={"record_set": record_set, "domain": domain}) if rows else []
        with cat.transaction() as con:
            con.execute("DELETE FROM shards WHERE mixture = ? AND stage = ?", [record_set, stage])
            for info in infos:
                record_shard(cat, record_set, stage, info, run_id, con=con)
        paths += [info.path for info in infos]
    return paths


def iter_shard_records(tar_paths: Iterable[str | Path]) -> Iterator[dict[str, Any]]:
    """TRL rows from pair shards: images as PIL images, videos as encoded bytes, provenance under ``meta``."""
    import webdataset as wds
    from PIL import Image

    for sample in wds.WebDataset([str(p) for p in tar_paths], shardshuffle=False, empty_check=False):
        record = json.loads(sample["json"])
        key = sample["__key__"]
        # members are named "<key>.<suffix>"; webdataset exposes them by suffix
        record["images"] = [Image.open(io.BytesIO(sample[m.removeprefix(key + ".")])).convert("RGB")
                            for m in record["images"]]
        record["videos"] = [sample[m.removeprefix(key + ".")] for m in record["videos"]]
        yield record


def load_preference_dataset(tar_paths: Iterable[str | Path]):
    """A ``datasets.Dataset`` with TRL's preference columns (plus ``meta``), read from pair shards."""
    import datasets

    message = [{"role": datasets.Value("string"),
                "content": [{"type": datasets.Value("string"), "text": datasets.Value("string")}]}]
    meta_keys = ("pair_id", "pair_set_id", "sample_id", "domain", "judge", "checkpoint_sha256",
                 "chosen_reason", "rejected_reason")
    features = datasets.Features({
        "prompt": message, "chosen": message, "rejected": message,
        "images": datasets.Sequence(datasets.Image()), "videos": datasets.Sequence(datasets.Value("binary")),
        "meta": {k: datasets.Value("string") for k in meta_keys}
        | {k: datasets.Value("float64") for k in ("chosen_score", "rejected_score", "margin")},
    })
    paths = [str(p) for p in tar_paths]

    def gen():
        for record in iter_shard_records(paths):
            record["meta"] = {k: record["meta"].get(k) for k in features["meta"]}
            yield record

    return datasets.Dataset.from_generator(gen, features=features, cache_dir=None)
