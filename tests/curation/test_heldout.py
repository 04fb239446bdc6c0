"""Held-out sets: seeded reservation, mixtures never draw them, and the shard scan finds a planted one."""
from __future__ import annotations

import io
import json
import tarfile

import pytest

from curation.heldout import FAMILIES, HeldoutError, export_heldout, reserve_heldout
from curation.leakage import LeakageError, check_no_leakage



def test_reservation_is_seeded_per_family_and_idempotent(demo_cat):
    split = reserve_heldout(demo_cat, per_family=2, seed=0)
    assert split.created and set(split.counts) == set(FAMILIES)
    rows = demo_cat.query("""SELECT h.family, s.task, m.kind FROM heldout h JOIN samples s USING (sample_id)
                        JOIN media m ON m.media_hash = h.media_hash""")
    for r in rows:  # each family holds its own task and media kind
        assert (r["task"], r["kind"]) == FAMILIES[r["family"]]
    first = demo_cat.query("SELECT sample_id FROM heldout ORDER BY sample_id")
    again = reserve_heldout(demo_cat, per_family=2, seed=0)
    assert not again.created and demo_cat.query("SELECT sample_id FROM heldout ORDER BY sample_id") == first
    with pytest.raises(HeldoutError, match="already exists"):
        reserve_heldout(demo_cat, per_family=2, seed=1)


def test_the_seed_order_is_an_md5_of_seed_and_id(demo_cat):
    import hashlib

    reserve_heldout(demo_cat, per_family=2, seed=7)
    candidates = demo_cat.query("""SELECT s.sample_id FROM samples s JOIN media m ON m.media_hash = s.media_hashes[1]
                              WHERE s.task = 'qa' AND m.kind = 'video' AND len(s.media_hashes) = 1
                                AND NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.source = s.source
                                                AND q.item = s.item)""")
    expected = sorted((r["sample_id"] for r in candidates),
                      key=lambda sid: hashlib.md5(f"7:{sid}".encode()).hexdigest())[:2]
    got = [r["sample_id"] for r in demo_cat.query("SELECT sample_id FROM heldout WHERE family = 'video_qa'")]
    assert sorted(got) == sorted(expected)


def test_mixtures_never_draw_held_out_samples_or_their_media(demo_cat):
    from curation.mixtures import load_mixture, select_mixture

    reserve_heldout(demo_cat, per_family=3, seed=0)
    select_mixture(demo_cat, load_mixture("manifests/mixtures/demo-stage2.yaml"))
    clash = demo_cat.query("""SELECT mm.sample_id FROM mixture_members mm JOIN samples s USING (sample_id)
                         WHERE EXISTS (SELECT 1 FROM heldout h WHERE h.sample_id = s.sample_id
                                       OR list_contains(s.media_hashes, h.media_hash))""")
    assert clash == []
    assert demo_cat.scalar("SELECT count(*) FROM mixture_members") > 0
    with pytest.raises(HeldoutError, match="mixtures were already sampled"):
        demo_cat.con.execute("DELETE FROM heldout")
        reserve_heldout(demo_cat, per_family=3, seed=0)


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_leakage_check_passes_clean_shards_and_names_planted_ones(demo_cat, tmp_path):
    reserve_heldout(demo_cat, per_family=2, seed=0)
    held = demo_cat.query("""SELECT h.sample_id, h.media_hash, m.storage_path FROM heldout h
                        JOIN media m USING (media_hash) WHERE h.family = 'image_qa' LIMIT 1""")[0]
    other = demo_cat.query("""SELECT sample_id FROM samples WHERE sample_id NOT IN (SELECT sample_id FROM heldout)
                         LIMIT 1""")[0]["sample_id"]
    clean = tmp_path / "clean.tar"
    _tar(clean, {"a.json": json.dumps({"sample_id": other, "media": []}).encode(), "a.jpg": b"not held out"})
    assert check_no_leakage(demo_cat, [clean]) == 1
    by_id = tmp_path / "shards" / "by-id.tar"
    by_id.parent.mkdir()
    _tar(by_id, {"k.json": json.dumps({"sample_id": held["sample_id"]}).encode()})
    by_bytes = tmp_path / "shards" / "by-bytes.tar"   # the media under another id, without metadata
    _tar(by_bytes, {"x.json": json.dumps({"sample_id": "other/1"}).encode(),
                    "x.jpg": open(held["storage_path"], "rb").read()})
    with pytest.raises(LeakageError) as err:
        check_no_leakage(demo_cat, [tmp_path / "shards"])
    message = str(err.value)
    assert "by-id.tar: k.json: held-out sample_id " + held["sample_id"] in message
    assert "by-bytes.tar: x.jpg: held-out media_bytes " + held["media_hash"] in message


def test_export_renders_task_files_over_the_held_out_docs(demo_cat, tmp_path):
    reserve_heldout(demo_cat, per_family=2, seed=0)
    task_dir = export_heldout(demo_cat, tmp_path / "eval")
    assert sorted(p.name for p in task_dir.glob("*.yaml")) == sorted(f"mavors_{f}.yaml" for f in FAMILIES)
    text = (task_dir / "mavors_image_qa.yaml").read_text()
    assert str(tmp_path / "eval" / "data" / "image_qa.jsonl") in text and "${" not in text
    docs = [json.loads(x) for x in (tmp_path / "eval" / "data" / "image_qa.jsonl").read_text().splitlines()]
    conv = {r["sample_id"]: json.loads(r["conversation"]) for r in demo_cat.query("SELECT sample_id, conversation FROM samples")}
    for d in docs:
        assert d["answer"] == next(t["value"] for t in conv[d["sample_id"]] if t["from"] == "gpt")
        assert "<image>" not in d["question"]
