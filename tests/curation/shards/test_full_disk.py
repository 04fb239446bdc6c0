"""Faults of our own outputs (full disk, read-only, permissions, I/O errors) stop a shard build and condemn no
sample; a rerun once the fault is fixed writes what an uninterrupted build writes, table by table, shard by shard.

    pytest tests/curation/shards/test_full_disk.py -q       # mounts tmpfs where allowed (root), skips elsewhere
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import curation.shards.writer as writer
import curation.transcode as transcode
from core.catalog import Catalog
from core.storage import StorageError
from curation.shards.build import build_shards, prepare_media
from curation.shards.format import sample_record
from curation.transcode import TranscodeConfig
from pipelines.cli import error_line
from shard_corpus import FPS, GOP, build, catalog_tables, fresh, make_video, mixture, shard_files

BROKEN = [{"source": "bad", "item": "b0", "reason": "undecodable_video", "stage": "shards"}]
"""The corpus's one refusal of its own media (a garbage mp4): the only row a build may write."""


def refusals(cat: Catalog) -> list[dict]:
    return cat.query("SELECT source, item, reason, stage FROM quarantine ORDER BY source, item")


@pytest.mark.parametrize("size, parallel", [
    ("8k", False),    # full while transcoding: the media step
    ("40k", False),   # transcodes fit, shards do not: the write step
    pytest.param("8k", True, marks=pytest.mark.slow),  # in Ray workers: the driver sees the worker's StorageError
], ids=["media-step", "write-step", "ray"])
def test_full_disk_fails_the_run_then_rerun_equals_a_clean_build(base_catalog, tmp_path, mount_tmpfs, size,
                                                                 parallel, request):
    if parallel:
        request.getfixturevalue("ray_local")
    with fresh(base_catalog, tmp_path, "ref") as cat:  # the uninterrupted build, serial, on a roomy disk
        build(cat, tmp_path / "ref", parallel=False)
        reference = catalog_tables(cat, tmp_path / "ref")
    assert [r[:4] for r in reference["quarantine"]] == [tuple(BROKEN[0].values())]

    out = mount_tmpfs(tmp_path / "small", size)
    with fresh(base_catalog, tmp_path) as cat:
        with pytest.raises(StorageError) as failed:
            build(cat, out, parallel=parallel)
        e = failed.value
        message = error_line(e)  # what `mavors shards build` prints after "error: "
        assert message == str(e) and "\n" not in message
        assert message.startswith(f"cannot write {out}/") and message.endswith(": No space left on device")
        assert e.errno == errno.ENOSPC and Path(e.path).is_relative_to(out)
        assert refusals(cat) in ([], BROKEN)  # no sample condemned for our disk
        assert not list(out.rglob(".*.partial"))  # a failed write frees its space

        mount_tmpfs.remount(out, "size=16m")  # the fault fixed: a larger disk at the same place
        builds = build_shards(cat, mixture(), out, parallel=parallel)
        assert refusals(cat) == BROKEN
        assert catalog_tables(cat, out) == reference
    assert shard_files(out) == shard_files(tmp_path / "ref") and len(shard_files(out)) >= 4
    for index in (tmp_path / "ref").rglob("index.json"):
        assert (out / index.relative_to(tmp_path / "ref")).read_bytes() == index.read_bytes()
    assert sum(b.n_samples for b in builds) == sum(r[5] for r in reference["shards"])


def test_read_only_shard_root_fails_the_run_and_condemns_nothing(base_catalog, tmp_path, mount_tmpfs):
    out = mount_tmpfs(tmp_path / "ro", "1m")
    cache = out / ".media" / mixture().transcode.profile_id()
    cache.mkdir(parents=True)  # the folders exist; writing files in them fails
    mount_tmpfs.remount(out, "ro")
    with fresh(base_catalog, tmp_path) as cat:
        with pytest.raises(StorageError) as failed:
            build(cat, out, parallel=False)
        assert str(failed.value).startswith(f"cannot write {cache}/.") and failed.value.errno == errno.EROFS
        assert str(failed.value).endswith(": Read-only file system")
        assert refusals(cat) in ([], BROKEN)


class _FaultyOS:
    """``os`` for the shard writer's module, whose ``write`` fails with one errno (an injected disk fault)."""

    def __init__(self, code: int):
        self.code = code

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        raise OSError(self.code, os.strerror(self.code))


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS, errno.EIO, errno.ENOSPC],
                         ids=["EACCES", "EROFS", "EIO", "ENOSPC"])
def test_errors_writing_our_outputs_are_storage_errors_not_refusals(tmp_path, monkeypatch, code):
    """Injected at the two places outputs are opened and written (the transcoder's file, the shard writer's
    descriptor): a good video is not refused, the error names the file, no partial file is left."""
    make_video(tmp_path / "good.mp4", 20, 10, 32, 24)
    cfg = TranscodeConfig(fps=FPS, gop=GOP).resolved()  # as the build hands it to its tasks
    reason = os.strerror(code)

    def failing_open(path, mode="r", *args, **kwargs):
        if "w" in mode:
            raise OSError(code, reason, str(path))
        return open(path, mode, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(transcode, "open", failing_open, raising=False)
        with pytest.raises(StorageError) as failed:
            prepare_media("video", "h0", str(tmp_path / "good.mp4"), str(tmp_path / "cache"), cfg)
    assert str(failed.value) == f"cannot write {tmp_path / 'cache' / '.h0.mp4.partial'}: {reason}"
    assert failed.value.errno == code and not list((tmp_path / "cache").iterdir())
    # the same call without the fault: a usable video, no refusal
    assert prepare_media("video", "h0", str(tmp_path / "good.mp4"), str(tmp_path / "cache"), cfg)[2] is None

    record = sample_record("s/0", {"sample_id": "s/0"}, [(tmp_path / "good.mp4", "mp4", {"kind": "video"})])
    with monkeypatch.context() as m:
        m.setattr(writer, "os", _FaultyOS(code))
        with pytest.raises(StorageError) as failed:
            writer.write_shard(tmp_path / "shards" / "x-000000.tar", [record])
    assert str(failed.value) == f"cannot write {tmp_path / 'shards' / '.x-000000.tar.partial'}: {reason}"
    assert not list((tmp_path / "shards").iterdir())


def test_a_broken_input_is_still_a_refusal(tmp_path):
    """The other side of the line: the input's own faults stay verdicts on the media."""
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    h, info, reason, detail = prepare_media("video", "h1", str(tmp_path / "bad.mp4"), str(tmp_path / "cache"),
                                            TranscodeConfig(fps=FPS, gop=GOP).resolved())
    assert info is None and reason == "undecodable_video" and str(tmp_path / "bad.mp4") in detail
