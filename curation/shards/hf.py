"""Shards as a Hugging Face ``datasets`` dataset, through the stock ``webdataset`` builder.

    from curation.shards.hf import load_shards
    ds = load_shards("mavors-work/shards/demo-stage2/s2")   # datasets.Dataset; streaming=True gives an IterableDataset
    ds[0]["json"]["conversation"], ds[0]["0.jpg"]           # the record's JSON as a struct, images as PIL

The builder infers its features from the first 5 samples of the first shard and refuses the dataset when they
do not carry the same members -- and a mixture shard always mixes them: ``0.jpg`` beside ``0.mp4``, two images,
text with no medium. Given ``features`` it fills a member a sample lacks with ``None`` instead. So the features
are built here from every record's JSON (read from the tar's JSON members only, not its media): ``json`` is the
union of all records' fields (pyarrow's type promotion: a field one record lacks or holds as null takes the type
others give it), and one column per media member suffix any record names, ``Image`` for image formats and
``Video`` for videos -- undecoded by default (``{"path", "bytes"}``: decoding needs torchcodec, and the Mavors
processor decodes the bytes itself), ``decode_videos=True`` for the builder's decoder.
"""
from __future__ import annotations

import json
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

from curation.shards.read import list_shards

IMAGE_FORMATS = {"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"}


def record_metas(shard: str | Path) -> list[dict[str, Any]]:
    """The JSON of every record of ``shard``, in order (tar headers and JSON members read, media skipped)."""
    metas = []
    try:
        with tarfile.open(shard, "r:") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".json"):
                    metas.append(json.loads(tar.extractfile(member).read()))
    except (tarfile.TarError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{shard}: not a readable shard ({type(e).__name__}: {e})") from None
    return metas


def shard_features(shards: Iterable[str | Path], decode_videos: bool = False) -> datasets.Features:
    """Features that cover every record of ``shards``: the JSON's union struct and each media member suffix."""
    schemas, media = [], {}
    for shard in shards:
        metas = record_metas(shard)
        if metas:
            schemas.append(pa.Table.from_pylist([{"json": m} for m in metas]).schema)
        for meta in metas:
            for entry in meta.get("media", []):
                media[entry["file"]] = entry.get("kind")
    if not schemas:
        raise ValueError("the shards hold no records")
    features = datasets.Features.from_arrow_schema(pa.unify_schemas(schemas, promote_options="permissive"))
    for suffix in sorted(media):
        ext = suffix.rsplit(".", 1)[-1].lower()
        is_image = ext in IMAGE_FORMATS if media[suffix] is None else media[suffix] == "image"
        features[suffix] = datasets.Image() if is_image else datasets.Video(decode=decode_videos)
    features["__key__"] = datasets.Value("string")
    features["__url__"] = datasets.Value("string")
    return features


def load_shards(root: str | Path, *, decode_videos: bool = False, **load_kwargs: Any) -> datasets.Dataset:
    """The shards ``root``'s ``index.json`` files list, as one ``train`` split of the stock ``webdataset`` builder
    (``load_kwargs`` go to ``datasets.load_dataset``: ``cache_dir``, ``streaming``, ``num_proc``...)."""
    tars = [entry.url for entry in list_shards(root)]
    features = shard_features(tars, decode_videos=decode_videos)
    return datasets.load_dataset("webdataset", data_files={"train": tars}, features=features, split="train",
                                 **load_kwargs)
