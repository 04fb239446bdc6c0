"""Source manifests and the readers that turn a dataset, as it ships, into catalog items.

A source manifest (``manifests/sources/*.yaml``) says where a dataset lies and how it
is laid out. Four layouts are read, the ones real datasets ship in:

* ``llava_json``: LLaVA-OneVision / LLaVA-Video annotations, a JSON list or JSONL of
  ``{"id", "image"|"video", "conversations": [{"from": "human"|"gpt", "value": "<image>\\n..."}]}``;
* ``caption_jsonl`` / ``caption_parquet``: one row per media file with a local path and a
  caption (LAION / CC-style, after img2dataset/video2dataset downloaded the files);
* ``webdataset``: tars of ``key.jpg|.mp4`` + ``key.txt|.json`` as img2dataset/video2dataset write.

Readers yield :class:`RawItem` (an item id, a conversation, media paths) or a refusal
with a countable reason; they never raise on a bad item, only on an unreadable source.

    python -c "from curation.sources import load_manifest; print(load_manifest('manifests/sources/llava_video_178k.yaml'))"
"""
from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import Field, PrivateAttr

from core.config import ConfigError, ConfigModel, config_path, load_yaml
from core.storage import storage_errors

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
"""Suffixes read as video (PyAV decodes them all), by ingestion and by the lmms-eval adapter."""
PLACEHOLDERS = {"image": "<image>", "video": "<video>"}
SYNTH_SUFFIX = "+synth"
"""Catalog sources ``<source>+synth`` hold the merged captions caption synthesis wrote for ``<source>``'s media."""


def synthesized_source(source: str) -> str:
    """The catalog source of ``source``'s synthesized captions (``kinetics_like`` -> ``kinetics_like+synth``)."""
    return source + SYNTH_SUFFIX


# Role names as LLaVA writes them; OpenAI-style names are accepted and mapped.
_ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}


class FieldNames(ConfigModel):
    """Column / key names inside the annotation files (defaults follow the public datasets)."""

    id: str = "id"
    """Item id key (llava_json, caption_*). Missing: the row number is the id."""
    conversations: str = "conversations"
    """Conversation key of llava_json items (and of a webdataset ``.json`` that carries a conversation)."""
    image: str = "image"
    """Image path key of llava_json items (a string or a list for multi-image items)."""
    video: str = "video"
    """Video path key of llava_json items."""
    media: str = "media"
    """Local media path column of caption_jsonl / caption_parquet (img2dataset: the file it wrote)."""
    caption: str = "caption"
    """Caption column of caption_* rows, or caption key inside a webdataset ``.json``."""


class SourceManifest(ConfigModel):
    """One dataset as it lies on disk. Relative paths resolve against the manifest's folder."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Unique source name; sample ids are ``<name>/<item>``."""
    modality: Literal["image", "video", "mixed"]
    """Media kind of the source (``mixed``: items carry images, videos or both)."""
    task: Literal["caption", "qa", "classification", "ocr", "grounding", "interleaved"]
    """Task of the samples (caption: one answer describing the media; qa: question/answer turns)."""
    format: Literal["llava_json", "caption_jsonl", "caption_parquet", "webdataset"]
    """How the annotations are laid out (see the module docstring)."""
    path: str
    """Annotation file (json/jsonl/parquet) or, for webdataset, a tar file or glob (``shards/*.tar``).
    Cluster: e.g. ``/datasets/llava-video-178k/0_30_s_academic_v0_1/annotations.json``."""
    media_root: str | None = None
    """Folder that relative media paths in the annotations start from; default: the annotation file's folder.
    Cluster: e.g. ``/datasets/llava-video-178k/``."""
    allowed_media_roots: list[str] = []
    """Folders besides ``media_root`` that media paths may lead into (a shared image pool several datasets
    cite, symlink farms); relative entries resolve against the manifest's folder. A media path that resolves
    (after ``..`` and symlinks) outside ``media_root`` and these is refused as ``path_escape`` and never
    opened. Cluster: e.g. ``[/datasets/coco/train2017]``."""
    stage_hints: list[Literal["1", "1.5", "2", "dpo"]] = []
    """Training stages this source is meant for (paper §4 / Appendix A), copied onto its samples."""
    license: str | None = None
    """License of the dataset, as its publisher states it."""
    notes: str | None = None
    """Free text: provenance, known problems."""
    fields: FieldNames = FieldNames()
    """Key / column names inside the annotation files."""
    caption_prompt: str = "Describe this {kind} in detail."
    """Human turn that caption rows are given (``{kind}`` is image or video); the caption is the answer."""

    _manifest_path: Path | None = PrivateAttr(None)

    @property
    def manifest_path(self) -> Path | None:
        """The YAML file this manifest was loaded from (set by :func:`load_manifest`)."""
        return self._manifest_path

    def resolve(self, value: str) -> Path:
        """A manifest path made absolute against the manifest's folder (:func:`core.config.config_path`)."""
        return config_path(value, self.manifest_path.parent if self.manifest_path else None)

    @property
    def annotation_paths(self) -> list[Path]:
        """The annotation file, or the sorted tar files of a webdataset glob."""
        p = self.resolve(self.path)
        if self.format == "webdataset" and glob.has_magic(str(p)):
            return [Path(x) for x in sorted(glob.glob(str(p)))]
        return [p]

    @property
    def media_dir(self) -> Path:
        return self.resolve(self.media_root) if self.media_root else self.resolve(self.path).parent

    def media_roots(self) -> list[Path]:
        """The real folders (symlinks resolved) media of this source may lie in: ``media_dir``, then
        ``allowed_media_roots``."""
        return [Path(os.path.realpath(p)) for p in [self.media_dir, *map(self.resolve, self.allowed_media_roots)]]

    def manifest_sha256(self) -> str | None:
        if self.manifest_path is None:
            return None
        return hashlib.sha256(self.manifest_path.read_bytes()).hexdigest()


def load_manifest(path: str | Path) -> SourceManifest:
    """Load and validate a source manifest; errors name the file and the field."""
    path = Path(path).resolve()
    manifest = load_yaml(path, SourceManifest)
    manifest._manifest_path = path
    return manifest


def load_manifests(paths: list[str | Path]) -> list[SourceManifest]:
    """Load several manifests; two with the same ``name`` is an error naming both files."""
    manifests = [load_manifest(p) for p in paths]
    seen: dict[str, Path | None] = {}
    for m in manifests:
        if m.name in seen:
            raise ConfigError(f"{m.manifest_path}: field 'name': source {m.name!r} also defined in {seen[m.name]}")
        seen[m.name] = m.manifest_path
    return manifests


# -- items -----------------------------------------------------------------------------

@dataclass
class RawItem:
    """One annotation as read: a conversation and its media paths, or the reason it was refused."""

    item: str
    conversation: list[dict[str, str]] | None = None
    media: list[tuple[str, str]] = field(default_factory=list)  # (absolute path, "image"|"video") in placeholder order
    reason: str | None = None
    detail: str | None = None


class ItemError(Exception):
    """An item that cannot become a sample: ``reason`` is countable, ``detail`` says what was found."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def media_kind(path: str) -> str | None:
    ext = os.path.splitext(path)[1].lower()
    return "image" if ext in IMAGE_EXTENSIONS else "video" if ext in VIDEO_EXTENSIONS else None


def normalize_conversation(turns: Any, media: list[tuple[str, str]]) -> list[dict[str, str]]:
    """Validate LLaVA turns and make placeholders explicit.

    Roles are mapped to human/gpt; an item with media but no placeholder gets them
    prepended to its first human turn (LLaVA's convention); placeholder counts must
    match the media list; there must be a non-empty answer turn.
    """
    if not isinstance(turns, list) or not turns:
        raise ItemError("bad_conversation", f"conversations must be a non-empty list, got {type(turns).__name__}")
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or not isinstance(t.get("value"), str) or t.get("from") not in _ROLES:
            raise ItemError("bad_conversation", f"turn {i} must be {{'from': human|gpt, 'value': str}}, got {t!r:.120}")
        out.append({"from": _ROLES[t["from"]], "value": t["value"]})
    if not any(t["from"] == "gpt" and t["value"].strip() for t in out):
        raise ItemError("no_answer_turn", f"{len(out)} turn(s), none from gpt with text")
    for kind, tag in PLACEHOLDERS.items():
        want = sum(1 for _, k in media if k == kind)
        have = sum(t["value"].count(tag) for t in out)
        if have == 0 and want:
            first = next((t for t in out if t["from"] == "human"), None)
            if first is None:
                raise ItemError("bad_conversation", "media given but no human turn to attach it to")
            first["value"] = (tag + "\n") * want + first["value"]
        elif have != want:
            raise ItemError("placeholder_mismatch", f"{have} {tag} placeholder(s) for {want} {kind}(s)")
    return out


def confined_media_path(manifest: SourceManifest, value: str, roots: list[Path]) -> str:
    """The real path of an annotation's media path (relative to ``media_dir``, or absolute), refused as
    ``path_escape`` when it lies outside every one of ``roots`` (:meth:`SourceManifest.media_roots`).
    Only ``..`` and symlinks are followed, nothing is opened; the path returned is the one checked."""
    real = Path(os.path.realpath(manifest.media_dir / value))
    if not any(real.is_relative_to(root) for root in roots):
        where = " or ".join(str(r) for r in roots)
        raise ItemError("path_escape", f"media path {value!r} resolves to {real}, outside {where} "
                                       "(list extra folders in the manifest's allowed_media_roots)")
    return str(real)


def _media_resolver(manifest: SourceManifest) -> Callable[[str], str]:
    """:func:`confined_media_path` for one read of a source, remembering the paths it resolved: annotation rows
    cite the same files many times (one realpath per distinct path, not per row)."""
    roots = manifest.media_roots()
    return functools.lru_cache(maxsize=1 << 16)(lambda value: confined_media_path(manifest, value, roots))


def caption_conversation(manifest: SourceManifest, kind: str, caption: Any) -> list[dict[str, str]]:
    """A caption row as a two-turn conversation: the caption prompt, then the caption."""
    if not isinstance(caption, str):
        raise ItemError("no_answer_turn", f"caption is {type(caption).__name__}, not text")
    prompt = PLACEHOLDERS[kind] + "\n" + manifest.caption_prompt.format(kind=kind)
    return normalize_conversation([{"from": "human", "value": prompt}, {"from": "gpt", "value": caption}],
                                  [("", kind)])


def iter_items(manifest: SourceManifest, media_store: Path) -> Iterator[RawItem]:
    """All items of a source in file order, streamed (a file of 10^7 items is never held whole).
    ``media_store``: where webdataset members are extracted. An item id that occurs twice is yielded twice:
    :func:`curation.ingest.ingest` keeps the first and refuses the others (``duplicate_item``) in SQL, so no
    set of every id is kept here."""
    for path in manifest.annotation_paths:
        if not path.exists():
            raise FileNotFoundError(f"{manifest.manifest_path}: field 'path': {path} does not exist")
    reader = {
        "llava_json": _read_llava,
        "caption_jsonl": _read_caption_jsonl,
        "caption_parquet": _read_caption_parquet,
        "webdataset": lambda m: _read_webdataset(m, media_store),
    }[manifest.format]
    yield from reader(manifest)


_JSON_BATCH = 8192
"""Records fetched from DuckDB's JSON reader at a time (bounded memory for any file size)."""


def _json_records(path: Path) -> Iterator[tuple[int, Any, ItemError | None]]:
    """(row number, record, error) of a JSON list file or a JSONL file; bad lines come back as errors."""
    if path.suffix == ".json":
        yield from _json_list_records(path)
        return
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                yield i, None, ItemError("not_utf8", f"{path.name} line {i + 1}: {e}")
                continue
            try:
                yield i, json.loads(text), None
            except json.JSONDecodeError as e:
                yield i, None, ItemError("bad_json", f"{path.name} line {i + 1}: {e}")


def _json_list_records(path: Path) -> Iterator[tuple[int, Any, None]]:
    """(row number, record, None) of a JSON list file, streamed: DuckDB's reader splits the list into records
    (batches of :data:`_JSON_BATCH`), each parsed here; a file that is not a UTF-8 JSON list is a ValueError."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")  # DuckDB's bar would print into the console of a long read
    try:
        cur = con.execute("SELECT json FROM read_json_objects(?, format = 'array')", [str(path)])
        row = 0
        while batch := cur.fetchmany(_JSON_BATCH):
            for (text,) in batch:
                yield row, json.loads(text), None
                row += 1
    except duckdb.Error as e:
        raise ValueError(f"{path}: not a valid UTF-8 JSON list of items ({str(e).splitlines()[0]})") from None
    finally:
        con.close()


def _item_id(manifest: SourceManifest, rec: Any, row: int) -> str:
    if isinstance(rec, dict) and rec.get(manifest.fields.id) not in (None, ""):
        return str(rec[manifest.fields.id])
    return f"row{row:06d}"


def _line_id(path: Path, row: int) -> str:
    """Item id of a line that does not parse: ``FILE:LINE`` (1-based), where a person finds it."""
    return f"{path.name}:{row + 1}"


def _read_llava(manifest: SourceManifest) -> Iterator[RawItem]:
    f = manifest.fields
    resolve = _media_resolver(manifest)
    path = manifest.annotation_paths[0]
    for row, rec, err in _json_records(path):
        if err:
            yield RawItem(_line_id(path, row), reason=err.reason, detail=err.detail)
            continue
        item = _item_id(manifest, rec, row)
        try:
            if not isinstance(rec, dict):
                raise ItemError("bad_json", f"item is {type(rec).__name__}, not an object")
            media = []
            for kind, key in (("image", f.image), ("video", f.video)):
                value = rec.get(key)
                for rel in ([value] if isinstance(value, str) else value or []):
                    media.append((resolve(rel), kind))
            yield RawItem(item, normalize_conversation(rec.get(f.conversations), media), media)
        except ItemError as e:
            yield RawItem(item, reason=e.reason, detail=e.detail)


def _caption_row(manifest: SourceManifest, rec: Any, row: int, resolve: Callable[[str], str]) -> RawItem:
    item = _item_id(manifest, rec, row)
    try:
        if not isinstance(rec, dict) or not isinstance(rec.get(manifest.fields.media), str):
            raise ItemError("bad_json", f"row has no {manifest.fields.media!r} path")
        path = resolve(rec[manifest.fields.media])
        kind = media_kind(rec[manifest.fields.media]) or ("video" if manifest.modality == "video" else "image")
        return RawItem(item, caption_conversation(manifest, kind, rec.get(manifest.fields.caption)), [(path, kind)])
    except ItemError as e:
        return RawItem(item, reason=e.reason, detail=e.detail)


def _read_caption_jsonl(manifest: SourceManifest) -> Iterator[RawItem]:
    resolve = _media_resolver(manifest)
    path = manifest.annotation_paths[0]
    for row, rec, err in _json_records(path):
        if err:
            yield RawItem(_line_id(path, row), reason=err.reason, detail=err.detail)
        else:
            yield _caption_row(manifest, rec, row, resolve)


def _read_caption_parquet(manifest: SourceManifest) -> Iterator[RawItem]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(manifest.annotation_paths[0])
    resolve = _media_resolver(manifest)
    row = 0
    for batch in pf.iter_batches(batch_size=4096):
        for rec in batch.to_pylist():
            yield _caption_row(manifest, rec, row, resolve)
            row += 1


def unsafe_member_name(name: str) -> bool:
    """A tar member name that would land outside the extraction folder (absolute, ``..``, drive letter)."""
    p = PurePosixPath(name.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts or (len(name) > 1 and name[1] == ":")


def store_path(media_store: Path, sha256: str, ext: str) -> Path:
    """Content-addressed location of extracted media: ``<store>/ab/abcdef....ext``."""
    return media_store / sha256[:2] / f"{sha256}{ext.lower()}"


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, media_store: Path) -> Path:
    """Stream a tar member into the content-addressed store (hashing while copying); returns its path.

    Errors reading the tar refuse it (the caller's ``bad_tar``); errors writing the store (disk full,
    read-only) are :class:`core.storage.StorageError`, a run failure: the tar is fine."""
    src = tar.extractfile(member)
    assert src is not None
    h = hashlib.sha256()
    with storage_errors(media_store):
        media_store.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=media_store, prefix=".part-")
    n, out = 0, os.fdopen(fd, "wb")
    try:
        while chunk := src.read(1 << 20):  # a read error is the tar's: not wrapped
            h.update(chunk)
            with storage_errors(tmp):
                out.write(chunk)
            n += len(chunk)
        with storage_errors(tmp):
            out.close()  # flushes: a full disk may show only here
    except BaseException:
        with contextlib.suppress(OSError):
            out.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if n != member.size:  # tarfile returns short data from a cut archive instead of failing
        os.unlink(tmp)
        raise tarfile.ReadError(f"member {member.name!r} truncated: {n} of {member.size} bytes")
    dest = store_path(media_store, h.hexdigest(), os.path.splitext(member.name)[1])
    with storage_errors(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(tmp, dest)  # same filesystem: an atomic rename; a rerun rewrites identical bytes
    return dest


def _read_webdataset(manifest: SourceManifest, media_store: Path) -> Iterator[RawItem]:
    """Items of every tar; a tar that cannot be read to its end is refused whole (``bad_tar``)."""
    for tar_path in manifest.annotation_paths:
        try:
            groups = _tar_groups(tar_path, media_store)
        except (tarfile.TarError, OSError, EOFError) as e:
            yield RawItem(tar_path.name, reason="bad_tar", detail=f"{tar_path}: {type(e).__name__}: {e}")
            continue
        for item, g in groups.items():
            yield _webdataset_item(manifest, item, g)


def _tar_groups(tar_path: Path, media_store: Path) -> dict[str, dict[str, Any]]:
    """Members grouped by key (path up to the first dot of the file name), as webdataset does; media extracted."""
    groups: dict[str, dict[str, Any]] = {}
    with tarfile.open(tar_path, "r:*") as tar:
        for member in tar:
            if member.isdir():
                continue
            if unsafe_member_name(member.name) or not member.isfile():
                what = "escapes the folder" if unsafe_member_name(member.name) else "is a link or device"
                bad = groups.setdefault(f"{tar_path.stem}/{member.name}", {"media": [], "bad": None})
                bad["bad"] = ItemError("unsafe_tar_member", f"{tar_path.name}: member {member.name!r} {what}")
                continue
            folder, base = os.path.split(member.name)
            key, _, ext = base.partition(".")
            item = f"{tar_path.stem}/{os.path.join(folder, key).removeprefix('./')}"
            g = groups.setdefault(item, {"media": [], "text": None, "json": None, "bad": None})
            ext = "." + ext.lower()
            if kind := media_kind(base):
                g["media"].append((str(_extract_member(tar, member, media_store)), kind))
            elif ext in (".txt", ".json"):
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise tarfile.ReadError(f"member {member.name!r} truncated: {len(data)} of {member.size} bytes")
                g[ext[1:].replace("txt", "text")] = data
        # A cut between members leaves tarfile silent: a whole archive ends with a zero block.
        tar.fileobj.seek(tar.offset)
        if tar.fileobj.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
            raise tarfile.ReadError(f"no end-of-archive block at offset {tar.offset}: the tar is cut short")
    return groups


def _webdataset_item(manifest: SourceManifest, item: str, g: dict[str, Any]) -> RawItem:
    try:
        if g["bad"]:
            raise g["bad"]
        if len(g["media"]) != 1:
            raise ItemError("missing_media", f"{len(g['media'])} media members for key (want 1)")
        path, kind = g["media"][0]
        meta = None
        if g["json"] is not None:
            try:
                meta = json.loads(g["json"].decode("utf-8"))
            except UnicodeDecodeError as e:
                raise ItemError("not_utf8", f".json member: {e}") from None
            except json.JSONDecodeError as e:
                raise ItemError("bad_json", f".json member: {e}") from None
        if isinstance(meta, dict) and manifest.fields.conversations in meta:
            conv = normalize_conversation(meta[manifest.fields.conversations], [(path, kind)])
        else:
            caption = meta.get(manifest.fields.caption) if isinstance(meta, dict) else None
            if caption is None and g["text"] is not None:
                try:
                    caption = g["text"].decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ItemError("not_utf8", f".txt member: {e}") from None
            conv = caption_conversation(manifest, kind, caption)
        return RawItem(item, conv, [(path, kind)])
    except ItemError as e:
        return RawItem(item, reason=e.reason, detail=e.detail)
