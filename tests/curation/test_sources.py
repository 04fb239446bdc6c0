"""Source manifests (validation, errors naming file and field) and the format readers, against stock readers.

    pytest tests/curation/test_sources.py -q
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from core.paths import MANIFESTS
from core.config import ConfigError
from curation.sources import (ItemError, SourceManifest, iter_items, load_manifest, load_manifests,
                              normalize_conversation, unsafe_member_name)

SHIPPED = sorted((MANIFESTS / "sources").rglob("*.yaml"))


def test_every_shipped_manifest_loads():
    assert len(SHIPPED) >= 4
    manifests = load_manifests(SHIPPED)
    assert {m.format for m in manifests} == {"llava_json", "caption_jsonl", "caption_parquet", "webdataset"}


def test_demo_manifests_load_and_resolve_relative_to_their_folder(demo_corpus):
    for m in load_manifests(sorted((demo_corpus / "manifests").glob("*.yaml"))):
        assert all(p.exists() for p in m.annotation_paths), m.name
        assert m.annotation_paths[0].is_relative_to(demo_corpus)


@pytest.mark.parametrize("body, field, expected", [
    ("modality: audio", "modality", "'image', 'video' or 'mixed'"),
    ("formt: llava_json", "formt", "Extra inputs are not permitted"),
    ("stage_hints: [3]", "stage_hints.0", "'1', '1.5', '2' or 'dpo'"),
    ("name: 'bad name!'", "name", "should match pattern"),
    ("fields: {captoin: text}", "fields.captoin", "Extra inputs are not permitted"),
])
def test_malformed_manifest_names_file_field_and_expectation(tmp_path, body, field, expected):
    base = {"name": "x", "modality": "image", "task": "caption", "format": "caption_jsonl", "path": "a.jsonl"}
    key = body.split(":")[0]
    lines = [f"{k}: {v}" for k, v in base.items() if k != key] + [body]
    path = tmp_path / "bad.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as e:
        load_manifest(path)
    msg = str(e.value)
    assert str(path) in msg and f"field '{field}'" in msg and expected in msg


def test_missing_required_field_and_broken_yaml(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("name: x\nmodality: image\nformat: webdataset\npath: a.tar\n")
    with pytest.raises(ConfigError, match=r"m\.yaml: field 'task': Field required"):
        load_manifest(path)
    path.write_text("name: [x\n")
    with pytest.raises(ConfigError, match=r"m\.yaml: not valid YAML"):
        load_manifest(path)


def test_duplicate_source_names_name_both_files(tmp_path):
    for n in ("a", "b"):
        (tmp_path / f"{n}.yaml").write_text("name: same\nmodality: image\ntask: qa\nformat: llava_json\npath: x.json\n")
    with pytest.raises(ConfigError, match=r"b\.yaml: field 'name'.*a\.yaml"):
        load_manifests([tmp_path / "a.yaml", tmp_path / "b.yaml"])


def test_normalize_conversation_rules():
    media = [("/v.mp4", "video")]
    conv = normalize_conversation([{"from": "user", "value": "What?"}, {"from": "assistant", "value": "A dog."}], media)
    assert conv == [{"from": "human", "value": "<video>\nWhat?"}, {"from": "gpt", "value": "A dog."}]
    for turns, reason in (
        ([{"from": "human", "value": "<video>\nWhat?"}], "no_answer_turn"),
        ([{"from": "human", "value": "<video>\nQ"}, {"from": "gpt", "value": " \n"}], "no_answer_turn"),
        ([{"from": "human", "value": "<video><video>Q"}, {"from": "gpt", "value": "A"}], "placeholder_mismatch"),
        ([{"from": "robot", "value": "Q"}, {"from": "gpt", "value": "A"}], "bad_conversation"),
        ("not a list", "bad_conversation"),
    ):
        with pytest.raises(ItemError) as e:
            normalize_conversation(turns, media)
        assert e.value.reason == reason


@pytest.mark.parametrize("name, unsafe", [
    ("000001.jpg", False), ("sub/000001.jpg", False), ("./a.jpg", False), ("a..b.jpg", False),
    ("../a.jpg", True), ("sub/../../a.jpg", True), ("/etc/passwd", True), ("C:/x.jpg", True),
])
def test_unsafe_member_names(name, unsafe):
    assert unsafe_member_name(name) is unsafe


def test_webdataset_items_match_the_webdataset_reader(demo_corpus, tmp_path):
    """Keys and captions as the `webdataset` library groups them (it skips nothing we keep)."""
    import webdataset as wds

    manifest = load_manifest(demo_corpus / "manifests" / "wds_images.yaml")
    tar_path = manifest.annotation_paths[0]
    items = {it.item: it for it in iter_items(manifest, tmp_path / "store")}
    good = {k: v for k, v in items.items() if v.reason is None}
    with tarfile.open(tar_path) as tar:
        safe = [m for m in tar.getmembers() if not unsafe_member_name(m.name)]
        clean = tmp_path / "clean.tar"
        with tarfile.open(clean, "w") as out:
            for m in safe:
                out.addfile(m, tar.extractfile(m))
    expected = {}
    for s in wds.WebDataset(str(clean), shardshuffle=False, empty_check=False):
        expected[f"{tar_path.stem}/{s['__key__']}"] = (s["txt"].decode(), s["jpg"])
    assert set(good) == set(expected)
    for key, (caption, jpg) in expected.items():
        it = good[key]
        assert it.conversation[-1] == {"from": "gpt", "value": caption}
        assert Path(it.media[0][0]).read_bytes() == jpg  # extracted bytes identical to the member
        assert Path(it.media[0][0]).is_relative_to(tmp_path / "store")
    assert {k: v.reason for k, v in items.items() if v.reason} == {
        f"{tar_path.stem}/../escape.jpg": "unsafe_tar_member",
        f"{tar_path.stem}//tmp/absolute.jpg": "unsafe_tar_member"}
    assert not (tmp_path / "escape.jpg").exists() and not Path("/tmp/absolute.jpg").exists()


def test_webdataset_symlink_member_is_unsafe(tmp_path):
    tar_path = tmp_path / "s.tar"
    with tarfile.open(tar_path, "w") as tar:
        link = tarfile.TarInfo("000.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        txt = tarfile.TarInfo("000.txt")
        txt.size = 3
        tar.addfile(txt, io.BytesIO(b"cap"))
    m = SourceManifest(name="s", modality="image", task="caption", format="webdataset", path=str(tar_path))
    items = list(iter_items(m, tmp_path / "store"))
    assert {(it.item, it.reason) for it in items} == {("s/000.jpg", "unsafe_tar_member"), ("s/000", "missing_media")}


def test_llava_json_list_and_jsonl_read_alike(tmp_path):
    recs = [{"id": "a", "image": "x.jpg", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
            {"id": "b", "image": ["x.jpg", "y.png"],
             "conversations": [{"from": "human", "value": "<image>\n<image>\nQ"}, {"from": "gpt", "value": "A"}]},
            {"id": "a", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}]
    (tmp_path / "a.json").write_text(json.dumps(recs))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    out = []
    for name in ("a.json", "a.jsonl"):
        m = SourceManifest(name="s", modality="image", task="qa", format="llava_json", path=str(tmp_path / name))
        out.append([(it.item, it.conversation, it.media, it.reason) for it in iter_items(m, tmp_path)])
    assert out[0] == out[1]
    (a, b, dup) = out[0]
    assert a[1][0]["value"] == "<image>\nQ" and a[2] == [(str(tmp_path / "x.jpg"), "image")]
    assert [p for p, _ in b[2]] == [str(tmp_path / "x.jpg"), str(tmp_path / "y.png")]
    assert dup[0] == "a" and dup[3] is None  # a repeated id is read as it is; ingest refuses it (test_ingest_scale)


@pytest.mark.parametrize("where", ["inside a member", "between members"])
def test_truncated_tar_is_refused_whole_and_other_shards_are_read(demo_corpus, tmp_path, where):
    shards = tmp_path / "shards"
    shards.mkdir()
    data = (demo_corpus / "wds_images" / "shard-000000.tar").read_bytes()
    with tarfile.open(demo_corpus / "wds_images" / "shard-000000.tar") as tar:
        second = tar.getmembers()[3]  # 000000001.jpg
    cut = second.offset_data + second.size // 2 if where == "inside a member" else second.offset
    (shards / "a.tar").write_bytes(data)
    (shards / "b.tar").write_bytes(data[:cut])
    m = SourceManifest(name="s", modality="image", task="caption", format="webdataset", path=str(shards / "*.tar"))
    items = list(iter_items(m, tmp_path / "store"))
    assert [(it.item, it.reason) for it in items if it.item.startswith("b")] == [("b.tar", "bad_tar")]
    assert sum(it.reason is None for it in items) == 5


def test_llava_item_with_one_media_path_outside_media_root_is_refused_whole(tmp_path):
    conv = [{"from": "human", "value": "<image>\n<image>\nQ"}, {"from": "gpt", "value": "A"}]
    (tmp_path / "root").mkdir()
    (tmp_path / "a.json").write_text(json.dumps([{"id": "in", "image": ["x.jpg", "sub/../y.jpg"], "conversations": conv},
                                                 {"id": "out", "image": ["x.jpg", "../y.jpg"], "conversations": conv}]))
    m = SourceManifest(name="s", modality="image", task="qa", format="llava_json", path=str(tmp_path / "a.json"),
                       media_root=str(tmp_path / "root"))
    items = {it.item: it for it in iter_items(m, tmp_path)}
    assert items["in"].reason is None
    assert [p for p, _ in items["in"].media] == [str(tmp_path / "root" / "x.jpg"), str(tmp_path / "root" / "y.jpg")]
    assert (items["out"].reason, items["out"].media) == ("path_escape", [])
    assert f"'../y.jpg' resolves to {tmp_path / 'y.jpg'}, outside {tmp_path / 'root'}" in items["out"].detail


@pytest.mark.parametrize("fmt", ["llava_json", "caption_jsonl"])
def test_a_line_that_does_not_parse_is_recorded_as_file_and_line(tmp_path, fmt):
    good = {"id": "a", "media": "x.jpg", "caption": "A picture.", "image": "x.jpg",
            "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    lines = [json.dumps(good).encode(), b"", b'{"id": "b", "media": ', '{"id": "caf\xe9"}'.encode("latin-1")]
    (tmp_path / "ann.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    m = SourceManifest(name="s", modality="image", task="qa", format=fmt, path=str(tmp_path / "ann.jsonl"))
    items = {it.item: it.reason for it in iter_items(m, tmp_path)}
    assert items == {"a": None, "ann.jsonl:3": "bad_json", "ann.jsonl:4": "not_utf8"}  # line 2 is blank


def test_webdataset_extraction_onto_a_full_disk_fails_the_run_not_the_tar(tmp_path, mount_tmpfs):
    """A media store without space is our fault, not the tar's: no ``bad_tar``, one error naming the file; once
    there is room the items are those extracted onto a roomy disk."""
    import numpy as np
    from PIL import Image

    from core.storage import StorageError

    tar_path = tmp_path / "s.tar"
    rng = np.random.default_rng(0)
    with tarfile.open(tar_path, "w") as tar:
        for i in range(3):  # noise JPEGs of ~10 kB: the second no longer fits an 8 kB store
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
            for name, data in ((f"{i:03d}.jpg", buf.getvalue()), (f"{i:03d}.txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    m = SourceManifest(name="s", modality="image", task="caption", format="webdataset", path=str(tar_path))
    store = mount_tmpfs(tmp_path / "store", "8k")
    with pytest.raises(StorageError) as failed:
        list(iter_items(m, store))
    assert str(failed.value).startswith(f"cannot write {store}/.part-")
    assert str(failed.value).endswith(": No space left on device")
    assert not list(store.glob(".part-*"))  # the partial copy is gone, its space free again

    mount_tmpfs.remount(store, "size=1m")

    def items(where):
        return [(it.item, it.reason, [(str(Path(p).relative_to(where)), k) for p, k in it.media])
                for it in iter_items(m, where)]
    assert items(store) == items(tmp_path / "roomy") and len(items(store)) == 3
