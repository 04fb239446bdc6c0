"""Preference records: ``dpo_pairs`` rows, their shards (the one shard record format), and a TRL ``datasets`` view.

    python -c "from curation.preference.records import load_preference_dataset as l; print(l(['x.tar']))"

A pair is stored in one form, the project's LLaVA turns: ``prompt`` (catalog) / ``conversation``
(shard) is the user turn with its ``<image>``/``<video>`` placeholders, ``chosen`` and
``rejected`` the two answer texts. A shard sample is a :mod:`curation.shards.format` record
keyed by ``pair_id`` (``KEY.json`` + ``KEY.<i>.<ext>`` per medium, in placeholder order), so the
trainer reads DPO shards exactly as mixture shards (``answered(record, "chosen")``).

TRL's DPO trainer reads other rows (``prompt``/``chosen``/``rejected`` as messages with
content parts, ``images``/``videos`` columns); :func:`load_preference_dataset` builds them
from the shards when they are read, for anyone training with TRL on these pairs, and
:func:`export_parquet` (``mavors dpo export --format parquet``) writes them as one Parquet file
with the images embedded and the videos as bytes or as absolute paths of files written beside it.
"""
from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from curation.preference.decisions import DOMAINS, Outcome
from curation.shards.build import record_shard
from curation.shards.format import ShardRecord, media_bytes, sample_record
from curation.shards.read import iter_samples
from curation.shards.writer import write_records
from curation.sources import PLACEHOLDERS
from curation.media import file_sha256

PROVENANCE = ("pair_set_id", "domain", "chosen_score", "rejected_score", "margin", "chosen_reason",
              "rejected_reason", "judge", "checkpoint_sha256", "rejected_media_path")
"""``dpo_pairs`` columns a shard record carries besides its conversation and media."""


def prompt_turns(question: str, media_kinds: Iterable[str]) -> list[dict[str, str]]:
    """The pair's prompt as LLaVA turns: one human turn, a placeholder per medium (in order), then the question."""
    return [{"from": "human", "value": "\n".join([*(PLACEHOLDERS[k] for k in media_kinds), question])}]


def pair_rows(set_id: str, outcome: Outcome, checkpoint_hash: str, run_id: str | None) -> list[dict[str, Any]]:
    """``dpo_pairs`` rows of one decided input."""
    inp = outcome.input
    rows = []
    for n, pair in enumerate(outcome.pairs):
        c, r = pair.chosen, pair.rejected
        rows.append({
            "pair_id": f"{set_id}/{inp.sample_id}/{n}", "pair_set_id": set_id, "sample_id": inp.sample_id,
            "domain": inp.domain, "prompt": prompt_turns(inp.question, [k for k, _ in inp.media]),
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


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def shard_record(row: dict[str, Any]) -> ShardRecord:
    """One ``dpo_pairs`` row as a shard record: its conversation and answers as stored, its media files."""
    fields = {k: row[k] for k in ("pair_id", "sample_id", "chosen", "rejected", *PROVENANCE)}
    fields |= {"conversation": _json(row["prompt"]), "temperatures": _json(row["temperatures"]),
               "seeds": _json(row["seeds"])}
    media = [(path, Path(path).suffix or ("jpg" if kind == "image" else "mp4"), {"kind": kind, "media_hash": h})
             for kind, path, h in zip(row["media_kinds"], row["media_paths"], row["media_hashes"])]
    return sample_record(row["pair_id"], fields, media)


def write_pair_shards(cat, set_id: str, out_dir: Path, *, max_samples: int, max_bytes: int = 512 << 20,
                      run_id: str | None = None) -> list[str]:
    """Shard every pair of the set, one folder per domain (``<out_dir>/<domain>/dpo-<domain>-NNNNNN.tar``).

    Shards are recorded in the ``shards`` table under record set ``dpo/<set_id>``. A
    domain whose recorded shards still match their checksums and hold exactly its
    current pairs is left alone; otherwise it is rewritten (pairs in ``pair_id`` order,
    so the bytes are a function of the pairs).
    """
    record_set = f"dpo/{set_id}"
    paths = []
    for domain in DOMAINS:
        rows = [{**r, "media_paths": [str(cat.resolved(p)) for p in r["media_paths"]]} for r in cat.query(
            "SELECT * FROM dpo_pairs WHERE pair_set_id = ? AND domain = ? ORDER BY pair_id", [set_id, domain])]
        stage = f"dpo-{domain}"
        recorded = cat.query("SELECT name, path, sha256, n_samples FROM shards WHERE mixture = ? AND stage = ?",
                             [record_set, stage])
        if recorded and sum(r["n_samples"] for r in recorded) == len(rows) and all(
                cat.resolved(r["path"]).exists() and file_sha256(cat.resolved(r["path"])) == r["sha256"]
                for r in recorded):
            paths += sorted(str(cat.resolved(r["path"])) for r in recorded)
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


def trl_row(record: dict[str, Any], media: list[bytes]) -> dict[str, Any]:
    """A pair record as TRL's conversational preference row: messages with content parts (a ``{"type": kind}``
    part per placeholder, in order), ``images`` (PIL) and ``videos`` (encoded bytes), provenance under ``meta``."""
    from PIL import Image

    kind_of = {tag: kind for kind, tag in PLACEHOLDERS.items()}

    def content(text: str) -> list[dict[str, str]]:
        lines = text.split("\n")  # prompt_turns: a line per placeholder, then the question
        kinds = []
        while lines and lines[0] in kind_of:
            kinds.append(kind_of[lines.pop(0)])
        return [{"type": k} for k in kinds] + [{"type": "text", "text": "\n".join(lines)}]

    kinds = [m["kind"] for m in record["media"]]
    return {
        "prompt": [{"role": "user" if t["from"] == "human" else "assistant", "content": content(t["value"])}
                   for t in record["conversation"]],
        **{side: [{"role": "assistant", "content": [{"type": "text", "text": record[side]}]}]
           for side in ("chosen", "rejected")},
        "images": [Image.open(io.BytesIO(b)).convert("RGB") for k, b in zip(kinds, media) if k == "image"],
        "videos": [b for k, b in zip(kinds, media) if k == "video"],
        "meta": record,
    }


def iter_trl_rows(tar_paths: Iterable[str | Path]) -> Iterator[dict[str, Any]]:
    """TRL rows of the pairs in ``tar_paths``, read through the one shard reader."""
    for sample in iter_samples(tar_paths):
        record = json.loads(sample["json"])
        yield trl_row(record, media_bytes(record, sample))


def load_preference_dataset(tar_paths: Iterable[str | Path], video_dir: Path | None = None):
    """A ``datasets.Dataset`` with TRL's preference columns (plus ``meta``), read from pair shards.

    ``videos`` holds each video's encoded bytes; with ``video_dir`` it holds absolute paths instead, each
    video written once there as ``<media_hash>.<ext>``.
    """
    import datasets

    message = [{"role": datasets.Value("string"),
                "content": [{"type": datasets.Value("string"), "text": datasets.Value("string")}]}]
    meta_keys = ("pair_id", "pair_set_id", "sample_id", "domain", "judge", "checkpoint_sha256",
                 "chosen_reason", "rejected_reason")
    features = datasets.Features({
        "prompt": message, "chosen": message, "rejected": message,
        "images": datasets.Sequence(datasets.Image()),
        "videos": datasets.Sequence(datasets.Value("binary" if video_dir is None else "string")),
        "meta": {k: datasets.Value("string") for k in meta_keys}
        | {k: datasets.Value("float64") for k in ("chosen_score", "rejected_score", "margin")},
    })
    paths = [str(p) for p in tar_paths]

    def gen():
        for row in iter_trl_rows(paths):
            if video_dir is not None:
                entries = [m for m in row["meta"]["media"] if m["kind"] == "video"]
                row["videos"] = [_video_file(video_dir, m, b) for m, b in zip(entries, row["videos"])]
            row["meta"] = {k: row["meta"].get(k) for k in features["meta"]}
            yield row

    return datasets.Dataset.from_generator(gen, features=features, cache_dir=None)


def _video_file(video_dir: Path, entry: dict[str, Any], content: bytes) -> str:
    """Absolute path of a video written once under ``video_dir`` (named by content hash, so reruns rewrite nothing)."""
    path = (video_dir / f"{entry['media_hash']}.{entry['file'].rsplit('.', 1)[-1]}").resolve()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(content)
        tmp.replace(path)
    return str(path)


def export_parquet(tar_paths: Iterable[str | Path], out: Path, videos: str = "bytes") -> int:
    """Write the pairs of ``tar_paths`` as TRL's preference dataset in one Parquet file; returns the pair count.

    Images are embedded (PNG bytes with the ``datasets`` Image feature, so ``load_dataset("parquet")`` gives PIL
    images back); ``videos="bytes"`` embeds the videos too, ``"paths"`` writes them to ``<out stem>-videos/`` and
    stores their absolute paths.
    """
    if videos not in ("bytes", "paths"):
        raise ValueError(f"videos={videos!r}: use 'bytes' or 'paths'")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    video_dir = out.parent / f"{out.stem}-videos" if videos == "paths" else None
    ds = load_preference_dataset(tar_paths, video_dir=video_dir)
    tmp = out.with_suffix(out.suffix + ".tmp")
    ds.to_parquet(str(tmp))
    tmp.replace(out)
    return len(ds)
