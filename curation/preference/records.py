"""Preference records in TRL's format: catalog rows, WebDataset samples, and a ``datasets`` loader.

TRL's DPO trainer reads conversational preference rows with the columns ``prompt``,
``chosen``, ``rejected`` and, for vision models, ``images`` (a list of images whose
``{"type": "image"}`` placeholders appear in the prompt)::

    {"prompt":   [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe ..."}]}],
     "chosen":   [{"role": "assistant", "content": [{"type": "text", "text": "A red circle ..."}]}],
     "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "A circle."}]}],
     "images":   [<PIL.Image>]}

Videos follow the same pattern (``{"type": "video"}`` placeholders, a ``videos`` column
of encoded video bytes). In a shard, one pair is one sample: ``<key>.json`` holds the
record (media named by member: ``"images": ["image0.jpg"]``) plus provenance under
``"meta"``, and the media travel beside it as ``<key>.image0.jpg`` / ``<key>.video0.mp4``.

    python -c "from curation.preference.records import load_preference_dataset as l; print(l(['x.tar']))"
"""
from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from curation.preference.decisions import Outcome

TRL_COLUMNS = ("prompt", "chosen", "rejected", "images", "videos")


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


def sample_key(pair_id: str) -> str:
    """WebDataset key of a pair: no dots or slashes (readers split the member name at the first dot)."""
    return hashlib.sha256(pair_id.encode()).hexdigest()[:32]


def shard_sample(row: dict[str, Any]) -> dict[str, Any]:
    """One ``dpo_pairs`` row as a WebDataset sample: ``__key__``, ``json`` and the media members (bytes)."""
    prompt = json.loads(row["prompt"]) if isinstance(row["prompt"], str) else row["prompt"]
    sample: dict[str, Any] = {"__key__": sample_key(row["pair_id"])}
    names: dict[str, list[str]] = {"image": [], "video": []}
    for kind, path in zip(row["media_kinds"], row["media_paths"]):
        ext = Path(path).suffix.lower().lstrip(".") or ("jpg" if kind == "image" else "mp4")
        member = f"{kind}{len(names[kind])}.{ext}"
        names[kind].append(member)
        sample[member] = Path(path).read_bytes()
    meta = {k: row[k] for k in ("pair_id", "pair_set_id", "sample_id", "domain", "chosen_score", "rejected_score",
                                "margin", "chosen_reason", "rejected_reason", "judge", "checkpoint_sha256",
                                "media_hashes", "rejected_media_path")}
    for k in ("temperatures", "seeds"):
        meta[k] = json.loads(row[k]) if isinstance(row[k], str) else row[k]
    sample["json"] = json.dumps({
        "prompt": prompt, "chosen": trl_answer(row["chosen"]), "rejected": trl_answer(row["rejected"]),
        "images": names["image"], "videos": names["video"], "meta": meta,
    }, ensure_ascii=False, sort_keys=True).encode()
    return sample


def iter_shard_records(tar_paths: Iterable[str | Path]) -> Iterator[dict[str, Any]]:
    """TRL rows from pair shards: images as PIL images, videos as encoded bytes, provenance under ``meta``."""
    import webdataset as wds
    from PIL import Image

    for sample in wds.WebDataset([str(p) for p in tar_paths], shardshuffle=False, empty_check=False):
        record = json.loads(sample["json"])
        record["images"] = [Image.open(io.BytesIO(sample[m])).convert("RGB") for m in record["images"]]
        record["videos"] = [sample[m] for m in record["videos"]]
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
