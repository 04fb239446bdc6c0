"""Ingest of the demo corpus, checked against the annotation files read with stock readers and the generator's truth.

    pytest tests/curation/test_ingest.py -q

Crash safety: `mavors ingest` is killed with SIGKILL right after its first source is committed
(``MAVORS_FAULT_AT=ingest#1``, core.faults: the catalog file watched from outside, no hook in
curation/ingest.py), rerun, and compared with an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from core.catalog import Catalog
from core.faults import FAULT_ENV
from curation.ingest import ingest, probe_media
from curation.sources import load_manifest, load_manifests, unsafe_member_name


def dump_tables(db: Path | Catalog, media_store: Path) -> dict[str, list[tuple]]:
    """Full contents of the ingest tables, minus timestamps and run ids, in a fixed order.

    ``db``: a catalog file (opened read-only here) or an open catalog of this process. Stored media paths are
    made absolute against the catalog's folder (the documented rule), so catalogs in different folders compare.
    """
    con = db.con if isinstance(db, Catalog) else duckdb.connect(str(db), read_only=True)
    folder = (db.path if isinstance(db, Catalog) else Path(db)).parent
    out = {t: con.execute(f"SELECT * EXCLUDE ({ex}) FROM {t} ORDER BY {order}").fetchall() for t, ex, order in (
        ("sources", "registered_at, run_id", "name"),
        ("media", "created_at, run_id", "media_hash"),
        ("samples", "created_at, run_id", "sample_id"),
        ("quarantine", "created_at, run_id", "source, item, stage, reason"),
    )}
    if not isinstance(db, Catalog):
        con.close()
    store = str(media_store)
    out["media"] = [tuple(str(folder / v).replace(store, "<store>") if i == 9 else v for i, v in enumerate(row))
                    for row in out["media"]]  # column 9: storage_path
    return out


def demo_manifests(corpus: Path):
    return load_manifests(sorted((corpus / "manifests").glob("*.yaml")))


def expected_items(corpus: Path) -> set[str]:
    """Every item id of every demo source, read with json / pyarrow / tarfile (bad lines skipped)."""
    ids = set()
    for m in demo_manifests(corpus):
        path = m.annotation_paths[0]
        if m.format == "caption_parquet":
            ids |= {f"{m.name}/{k}" for k in pq.read_table(path).column(m.fields.id).to_pylist()}
        elif m.format == "webdataset":
            with tarfile.open(path) as tar:
                ids |= {f"{m.name}/{path.stem}/{n.split('.')[0]}" for n in tar.getnames()
                        if n.endswith(".jpg") and not unsafe_member_name(n)}
        elif path.suffix == ".json":
            ids |= {f"{m.name}/{r['id']}" for r in json.loads(path.read_text())}
        else:
            for line in path.read_bytes().splitlines():
                try:
                    ids.add(f"{m.name}/{json.loads(line.decode())['id']}")
                except (UnicodeDecodeError, json.JSONDecodeError):
                    pass  # planted bad lines: expected in quarantine under their row number
    return ids



def test_every_bad_item_is_quarantined_with_its_reason_and_every_good_one_ingested(demo_catalog, demo_corpus):
    truth = json.loads((demo_corpus / "corpus.json").read_text())
    with Catalog(demo_catalog, read_only=True) as c:
        refused = {f"{r['source']}/{r['item']}": r["reason"] for r in c.query("SELECT * FROM quarantine")}
        samples = {r["sample_id"] for r in c.query("SELECT sample_id FROM samples")}
        details = c.query("SELECT detail FROM quarantine WHERE reason = 'truncated_image'")
    assert refused == truth["quarantine"]
    assert set(truth["quarantine"].values()) >= {
        "zero_byte", "truncated_image", "decompression_bomb", "undecodable_video", "missing_media",
        "not_utf8", "bad_json", "no_answer_turn", "unsafe_tar_member"}
    assert samples == expected_items(demo_corpus) - set(truth["quarantine"])
    assert all("bad_truncated" in d["detail"] for d in details)  # the detail names the file


def test_media_rows_match_the_files(demo_catalog, demo_corpus):
    """One row per distinct content; values as generated; tar members hashed as the tar holds them."""
    truth = json.loads((demo_corpus / "corpus.json").read_text())["media"]
    want = {}
    for rel, t in truth.items():
        if ".tar:" in rel:
            tar_rel, member = rel.split(":")
            with tarfile.open(demo_corpus / tar_rel) as tar:
                data = tar.extractfile(member).read()
        else:
            data = (demo_corpus / rel).read_bytes()
        want[hashlib.sha256(data).hexdigest()] = (t["kind"], len(data), t["width"], t["height"], t["n_frames"], t["codec"])
    with Catalog(demo_catalog, read_only=True) as c:
        rows = c.query("SELECT * FROM media")
        used = {h for (h,) in c.con.execute("SELECT DISTINCT unnest(media_hashes) FROM samples").fetchall()}
    got = {r["media_hash"]: (r["kind"], r["bytes"], r["width"], r["height"], r["n_frames"], r["codec"]) for r in rows}
    assert got == want
    assert used == set(want)
    for r in rows:
        stored = demo_catalog.parent / r["storage_path"]  # relative paths start at the catalog's folder
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == r["media_hash"]


def test_planted_duplicates_share_one_media_row_across_sources(demo_catalog, demo_corpus):
    planted = json.loads((demo_corpus / "planted_duplicates.json").read_text())
    with Catalog(demo_catalog, read_only=True) as c:
        hashes = {r["sample_id"]: set(r["media_hashes"]) for r in c.query("SELECT sample_id, media_hashes FROM samples")}
        n_media = c.scalar("SELECT count(*) FROM media")
    cross = 0
    for group in planted["exact"]:
        shared = set.intersection(*(hashes[s] for s in group["samples"]))
        assert len(shared) == 1, group
        cross += len({s.split("/")[0] for s in group["samples"]}) > 1
    assert cross >= 5
    for group in planted["near"]:  # near duplicates are different bytes: not this step's job
        a, b = group["samples"]
        assert hashes[a].isdisjoint(hashes[b])
    all_uses = [h for hs in hashes.values() for h in hs]
    assert n_media == len(set(all_uses)) < len(all_uses)


def test_samples_carry_conversation_task_and_stage_hints(demo_catalog, demo_corpus):
    anns = {r["id"]: r for r in json.loads((demo_corpus / "video_qa" / "annotations.json").read_text())}
    iqa = [json.loads(line) for line in (demo_corpus / "image_qa" / "annotations.jsonl").read_text().splitlines()]
    with Catalog(demo_catalog, read_only=True) as c:
        rows = {r["sample_id"]: r for r in c.query("SELECT * FROM samples")}
    v = rows["video_qa/vqa-0002"]
    assert json.loads(v["conversation"]) == anns["vqa-0002"]["conversations"]
    assert (v["task"], v["stage_hints"]) == ("qa", ["2"])
    no_tag = next(r for r in iqa if r["id"] == "iqa-0001")["conversations"]
    assert json.loads(rows["image_qa/iqa-0001"]["conversation"])[0]["value"] == "<image>\n" + no_tag[0]["value"]
    multi = rows["image_qa/iqa-multi"]
    sha = lambda rel: hashlib.sha256((demo_corpus / "image_qa" / rel).read_bytes()).hexdigest()  # noqa: E731
    assert multi["media_hashes"] == [sha(p) for p in next(r for r in iqa if r["id"] == "iqa-multi")["image"]]
    cap = json.loads(rows["kinetics_like/kin-0000"]["conversation"])
    assert cap[0]["value"] == "<video>\nWhat action does this video show?" and rows["kinetics_like/kin-0000"]["task"] == "caption"


def test_reingest_adds_nothing(demo_cat, demo_corpus, demo_catalog, ray_local):
    store = demo_catalog.parent / "media"
    before = dump_tables(demo_cat, store)
    reports = ingest(demo_manifests(demo_corpus), demo_cat, media_store=store)
    assert all(r.new == r.replaced == r.new_media == 0 for r in reports)
    assert sum(r.unchanged for r in reports) == len(before["samples"])
    assert dump_tables(demo_cat, store) == before
    assert demo_cat.scalar("SELECT count(*) FROM runs") == 0  # the library records no run: its caller does


def test_changed_items_replace_their_rows(demo_cat, demo_corpus, tmp_path, ray_local):
    """A new caption and a swapped image change the content hash: those rows are replaced, nothing duplicated.
    A repaired line loses its refusal and becomes a sample; a removed item stays, counted as stale."""
    lines = (demo_corpus / "image_captions" / "captions.jsonl").read_bytes().splitlines()
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except UnicodeDecodeError:
            out.append(line)
            continue
        except json.JSONDecodeError:  # repair the malformed line (same row number)
            out.append(json.dumps({"id": "cap-fixed", "media": "images/cap_04.jpg", "caption": "Fixed."}).encode())
            continue
        if rec["id"] == "cap-0009":
            continue
        if rec["id"] == "cap-0002":
            rec["caption"] = "A recaptioned picture."
        if rec["id"] == "cap-0004":
            rec["media"] = "images/cap_08.jpg"
        out.append(json.dumps(rec).encode())
    (tmp_path / "captions.jsonl").write_bytes(b"\n".join(out) + b"\n")
    src = (demo_corpus / "manifests" / "image_captions.yaml").read_text()
    manifest = tmp_path / "image_captions.yaml"
    manifest.write_text(src.replace("../image_captions/captions.jsonl", str(tmp_path / "captions.jsonl"))
                        + f"media_root: {demo_corpus / 'image_captions'}\n")
    hints_only = tmp_path / "hints" / "image_captions_parquet.yaml"  # a manifest edit, same content
    hints_only.parent.mkdir()
    hints_only.write_text((demo_corpus / "manifests" / "image_captions_parquet.yaml").read_text()
                          .replace("../image_captions_parquet", str(demo_corpus / "image_captions_parquet"))
                          .replace("- '1'", "- '1'\n- '1.5'"))
    before = {r["sample_id"]: r for r in demo_cat.query("SELECT * FROM samples")}
    report, parquet = ingest([load_manifest(manifest), load_manifest(hints_only)], demo_cat,
                             media_store=tmp_path / "store")
    assert (parquet.replaced, parquet.new) == (6, 0)
    assert demo_cat.query("SELECT DISTINCT stage_hints FROM samples WHERE source = 'image_captions_parquet'") == [
        {"stage_hints": ["1", "1.5"]}]
    after = {r["sample_id"]: r for r in demo_cat.query("SELECT * FROM samples")}
    assert (report.replaced, report.new, report.stale) == (2, 1, 1)
    assert set(after) == set(before) | {"image_captions/cap-fixed"}
    refused = {r["item"]: r["reason"]
               for r in demo_cat.query("SELECT * FROM quarantine WHERE source = 'image_captions'")}
    assert "captions.jsonl:7" not in refused and refused["captions.jsonl:4"] == "not_utf8" and len(refused) == 5
    changed = {s for s in before if after[s]["content_sha256"] != before[s]["content_sha256"]}
    assert all(after[s] == before[s] for s in before if not s.startswith("image_captions"))
    assert changed == {"image_captions/cap-0002", "image_captions/cap-0004"}
    assert json.loads(after["image_captions/cap-0002"]["conversation"])[1]["value"] == "A recaptioned picture."
    assert after["image_captions/cap-0004"]["media_hashes"] == before["image_captions/cap-0008"]["media_hashes"]


def test_ingest_without_ray_and_sources_read_in_two_processes_gives_the_same_catalog(demo_corpus, demo_catalog,
                                                                                     tmp_path):
    store = demo_catalog.parent / "media"  # the demo catalog: probed on Ray, sources read in this process
    with Catalog(tmp_path / "c.duckdb") as c:
        ingest(demo_manifests(demo_corpus), c, media_store=store, workers=0, run_id="caller-run", stage_processes=2)
        # every row written carries the caller's run (its report shows them); no run row of ingest's own
        for table in ("sources", "media", "samples", "quarantine"):
            assert c.query(f"SELECT DISTINCT run_id FROM {table}") == [{"run_id": "caller-run"}], table
        assert c.scalar("SELECT count(*) FROM runs") == 0
    assert dump_tables(tmp_path / "c.duckdb", store) == dump_tables(demo_catalog, store)


def test_probe_media_on_ray_returns_every_file_even_from_all_failed_batches(demo_corpus, ray_local, tmp_path):
    truth = json.loads((demo_corpus / "corpus.json").read_text())["media"]["video_qa/videos/vqa_00.mp4"]
    media = [(str(tmp_path / f"gone{i}.jpg"), "image") for i in range(9)]
    media.append((str(demo_corpus / "video_qa/videos/vqa_00.mp4"), "video"))
    got = probe_media(media, workers=2, batch_size=2)
    assert set(got) == set(media)
    assert all(got[k]["reason"] == "missing_media" and got[k]["bytes"] is None for k in media[:9])
    ok = got[media[9]]
    assert ok["reason"] is None and (ok["n_frames"], ok["width"], ok["fps"]) == (
        truth["n_frames"], truth["width"], truth["fps"])


def _per_source(path: Path, table: str) -> dict[str, int]:
    """Rows per source (``sources``: its one row) read with plain duckdb."""
    column = "name" if table == "sources" else "source"
    with duckdb.connect(str(path), read_only=True) as con:
        return dict(con.execute(f"SELECT {column}, count(*) FROM {table} GROUP BY {column}").fetchall())


def test_sigkill_mid_ingest_then_rerun_equals_an_uninterrupted_run(demo_corpus, demo_catalog, tmp_path):
    work = tmp_path / "work"
    (tmp_path / "settings.yaml").write_text(f"work_dir: {work}\n")
    manifests = sorted(str(p) for p in (demo_corpus / "manifests").glob("*.yaml"))
    order = [m.name for m in demo_manifests(demo_corpus)]  # the order ingest writes the sources in
    env = {**os.environ, "MAVORS_CONFIG": str(tmp_path / "settings.yaml")}
    # Probing in-process (--no-ray) spares a second Ray; the kill lands in the driver's write phase.
    cmd = [sys.executable, "-m", "pipelines.cli", "ingest", "--no-ray", *manifests]
    killed = subprocess.run(cmd, env={**env, FAULT_ENV: "ingest#1"}, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, (killed.stdout[-3000:], killed.stderr[-3000:])
    assert "fault injection: SIGKILL during step ingest (after 1 catalog commit(s))" in killed.stderr

    # Whole sources, in order, from the first up to where the kill landed; nothing of the later ones.
    catalog_path = work / "catalog.duckdb"
    written = sorted(_per_source(catalog_path, "sources"), key=order.index)
    assert 1 <= len(written) < len(order) and written == order[:len(written)]
    clean_samples, clean_refused = _per_source(demo_catalog, "samples"), _per_source(demo_catalog, "quarantine")
    assert _per_source(catalog_path, "samples") == {s: n for s, n in clean_samples.items() if s in written}
    assert _per_source(catalog_path, "quarantine") == {s: n for s, n in clean_refused.items() if s in written}
    with duckdb.connect(str(catalog_path), read_only=True) as con:
        assert con.execute("SELECT command, status FROM runs").fetchall() == [("ingest", "running")]  # as it died

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    with duckdb.connect(str(catalog_path), read_only=True) as con:
        runs = con.execute("SELECT command, status, detail FROM runs ORDER BY started_at").fetchall()
    # One row per command: the killed one found dead by the rerun, and the rerun's, which added only the rest.
    assert [r[:2] for r in runs] == [("ingest", "interrupted"), ("ingest", "completed")]
    assert json.loads(runs[1][2]) == {s: 0 if s in written else clean_samples.get(s, 0) for s in order}
    assert dump_tables(catalog_path, work / "media") == dump_tables(demo_catalog, demo_catalog.parent / "media")


def _image(path: Path, seed: int) -> Path:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def test_media_outside_media_root_is_refused_unopened_unless_its_root_is_allowed(tmp_path, monkeypatch):
    """``../x.jpg``, an absolute path elsewhere and a symlink inside media_root pointing out are
    ``path_escape`` and never hashed or probed; a folder listed in ``allowed_media_roots`` is reachable
    (by a relative path, an absolute one, or a symlink into it)."""
    import curation.ingest as ingest_module

    data, media = tmp_path / "data", tmp_path / "data" / "media"
    ok = _image(media / "ok.jpg", 0)
    sibling = _image(data / "x.jpg", 1)  # next to media_root, not in it
    secret = _image(tmp_path / "elsewhere" / "secret.jpg", 2)
    pool = _image(tmp_path / "shared" / "pool.jpg", 3)
    (media / "link_out.jpg").symlink_to(secret)
    (media / "link_pool.jpg").symlink_to(pool)
    rows = {"ok": "ok.jpg", "dotdot": "../x.jpg", "absolute": str(secret), "link_out": "link_out.jpg",
            "pool_rel": "../../shared/pool.jpg", "pool_abs": str(pool), "pool_link": "link_pool.jpg"}
    (data / "captions.jsonl").write_text("".join(json.dumps({"id": k, "media": v, "caption": f"Picture {k}."}) + "\n"
                                                 for k, v in rows.items()))
    base = "name: s\nmodality: image\ntask: caption\nformat: caption_jsonl\npath: captions.jsonl\nmedia_root: media\n"
    (data / "strict.yaml").write_text(base)
    (data / "pooled.yaml").write_text(base + "allowed_media_roots: [../shared]\n")
    opened = []

    def recording_probe(path, kind):
        opened.append(str(path))
        return hash_and_probe(path, kind)

    from curation.media import hash_and_probe

    monkeypatch.setattr(ingest_module, "hash_and_probe", recording_probe)
    escapes = {"dotdot", "absolute", "link_out"}
    for name, allowed in (("strict", set()), ("pooled", {"pool_rel", "pool_abs", "pool_link"})):
        opened.clear()
        with Catalog(tmp_path / f"{name}.duckdb") as c:
            ingest([load_manifest(data / f"{name}.yaml")], c, media_store=tmp_path / "store", workers=0)
            refused = {r["item"]: (r["reason"], r["detail"]) for r in c.query("SELECT * FROM quarantine")}
            samples = {r["item"] for r in c.query("SELECT item FROM samples")}
            stored = {str(tmp_path / r["storage_path"]) for r in c.query("SELECT storage_path FROM media")}
        assert samples == {"ok"} | allowed
        assert {k: v[0] for k, v in refused.items()} == dict.fromkeys(set(rows) - samples, "path_escape")
        assert str(secret) in refused["link_out"][1] and str(media) in refused["link_out"][1]
        assert set(opened) == stored == {str(ok)} | ({str(pool)} if allowed else set())
        assert not {str(sibling), str(secret)} & set(opened) and escapes <= set(refused)
