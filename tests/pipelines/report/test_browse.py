"""``mavors catalog query|describe|show`` and the documented views, on a small hand-built catalog whose
expected answers are worked out by hand here (and, for the views, by independent SQL over the tables)."""
from __future__ import annotations

import datetime as dt
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from core.catalog import SCHEMA_DIR, Catalog
from pipelines.cli import app, error_line
from pipelines.report.browse import describe, run_query, sample_card

T0 = dt.datetime(2026, 1, 1)
T1 = dt.datetime(2026, 1, 2)


def _conv(q: str, a: str, tag: str = "<image>\n") -> list[dict]:
    return [{"from": "human", "value": f"{tag}{q}"}, {"from": "gpt", "value": a}]


@pytest.fixture
def small(tmp_path):
    """Two sources; a/q0 and a/q1 share image h1 (dedup keeps q0), a/t0 is text-only and held out, b/c0 is a
    video whose shard step refused it, a/bad was refused at ingest; mixture m stage 2 drew q0 (sharded) and c0."""
    path = tmp_path / "catalog.duckdb"
    with Catalog(path) as cat:
        cat.insert("sources", [{"name": n, "modality": m, "task": t, "format": "llava_json", "path": f"/data/{n}.json"}
                               for n, m, t in (("a", "image", "qa"), ("b", "video", "caption"))])
        cat.insert("media", [
            {"media_hash": "h1", "kind": "image", "bytes": 10, "width": 64, "height": 48, "n_frames": 1,
             "codec": "PNG", "storage_path": "/data/img.png"},
            {"media_hash": "h2", "kind": "video", "bytes": 99, "width": 32, "height": 32, "duration_s": 2.0,
             "fps": 8.0, "n_frames": 16, "codec": "h264", "storage_path": "/data/vid.mp4"}])
        cat.insert("samples", [
            {"sample_id": sid, "source": sid.split("/")[0], "item": sid.split("/")[1], "task": task,
             "conversation": conv, "media_hashes": hashes, "content_sha256": sid}
            for sid, task, conv, hashes in (
                ("a/q0", "qa", _conv("What colour?", "Red."), ["h1"]),
                ("a/q1", "qa", _conv("Which colour?", "It is red."), ["h1"]),
                ("a/t0", "qa", _conv("Two plus two?", "Four.", tag=""), []),
                ("b/c0", "caption", _conv("Describe.", "A circle moves.", tag="<video>\n"), ["h2"]))])
        cat.quarantine([{"source": "a", "item": "bad", "reason": "truncated_image", "detail": "/data/bad.png: cut"},
                        {"source": "b", "item": "c0", "reason": "video_decode", "detail": "moov atom",
                         "stage": "shards"}])
        cat.insert("ppl_scores", [
            {"sample_id": sid, "scorer": scorer, "template_version": "v1", "text_scope": "answer", "ppl": ppl,
             "mean_nll": 0.5, "n_tokens": 3, "backend": "transformers", "model_path": "/m", "created_at": at}
            for sid, scorer, ppl, at in (("a/q0", "old", 2.0, T0), ("a/q0", "new", 3.0, T1), ("a/q1", "new", 5.0, T1))])
        cat.insert("dedup_decisions", [
            {"policy": "p", "sample_id": sid, "source": "a", "task": "qa", "group_key": key, "group_size": size,
             "rule": "keep_k_lowest", "k": 1, "rank": rank, "ppl": ppl, "kept": kept, "reason": reason, "seed": 0,
             "grouping": "exact", "scorer": "new", "template_version": "v1", "text_scope": "answer"}
            for sid, key, size, rank, ppl, kept, reason in (
                ("a/q0", "h1", 2, 1, 3.0, True, "lowest_ppl"), ("a/q1", "h1", 2, 2, 5.0, False, "higher_ppl"),
                ("a/t0", None, 1, None, None, True, "no_media"))])
        cat.insert("heldout", [{"family": "image_qa", "sample_id": "a/t0", "media_hash": "-", "split": "heldout-s0",
                                "seed": 0}])
        cat.insert("mixtures", [{"name": "m", "config": {}, "config_sha256": "x", "seed": 0, "dedup_policy": "p"}])
        cat.insert("mixture_members", [
            {"mixture": "m", "stage": "2", "sample_id": sid, "source": sid[0], "task": task, "entry": 0,
             "draw_key": sid, "dedup_policy": "p", "dedup_reason": reason, "shard": shard}
            for sid, task, reason, shard in (("a/q0", "qa", "lowest_ppl", "m-000000.tar"),
                                             ("b/c0", "caption", "no_duplicate", None))])
        cat.insert("shards", [{"mixture": "m", "stage": "2", "name": "m-000000.tar", "path": "/shards/m-000000.tar",
                               "sha256": "s", "n_samples": 1, "bytes": 1024}])
        cat.insert("dpo_pair_sets", [{"pair_set_id": "ps", "checkpoint_path": "/ck", "checkpoint_sha256": "c",
                                      "backend": "mavors", "judge": "self", "config": {}, "seed": 0,
                                      "shard_dir": "/dpo/ps/shards"}])
        cat.insert("dpo_pairs", [{
            "pair_id": "ps/a/q0/0", "pair_set_id": "ps", "sample_id": "a/q0", "domain": "qa", "prompt": [],
            "chosen": "Red.", "rejected": "Blue.", "chosen_candidate": "positive-0", "rejected_candidate": "negative-1",
            "margin": 1.0, "chosen_reason": "correct_terminated", "rejected_reason": "wrong", "temperatures": {},
            "seeds": {}, "media_hashes": ["h1"], "media_kinds": ["image"], "media_paths": ["/data/img.png"],
            "checkpoint_sha256": "c"}])
    return path


@pytest.fixture
def cat(small):
    with Catalog(small, read_only=True) as c:
        yield c


def _as_dicts(cat: Catalog, sql: str) -> dict[str, dict]:
    return {r["sample_id"]: r for r in cat.query(sql)}


def test_sample_overview_matches_hand_worked_rows(cat):
    got = _as_dicts(cat, "SELECT * FROM sample_overview")
    assert sorted(got) == ["a/q0", "a/q1", "a/t0", "b/c0"]
    q0 = got["a/q0"]
    assert (q0["n_media"], q0["ppl_scorer"], q0["ppl"]) == (1, "new", 3.0)  # the newer of two scores
    assert (q0["dedup_policy"], q0["dedup_kept"], q0["dedup_reason"]) == ("p", True, "lowest_ppl")
    assert (q0["mixtures"], q0["n_shards"], q0["n_dpo_pairs"], q0["quarantined"]) == (["m:2"], 1, 1, [])
    assert (got["a/q1"]["dedup_kept"], got["a/q1"]["mixtures"]) == (False, [])
    assert (got["a/t0"]["n_media"], got["a/t0"]["heldout_split"], got["a/t0"]["ppl"]) == (0, "heldout-s0", None)
    c0 = got["b/c0"]
    assert (c0["mixtures"], c0["n_shards"], c0["quarantined"], c0["dedup_kept"]) == (["m:2"], 0, ["shards:video_decode"], None)


def test_views_agree_with_independent_sql(cat):
    """training_set = members joined to their recorded shard; dedup_groups = decisions grouped by hand."""
    ts = cat.query("SELECT mixture, stage, sample_id, shard_path FROM training_set")
    independent = cat.query("""
        SELECT m.mixture, m.stage, m.sample_id, s.path AS shard_path FROM mixture_members m, shards s
        WHERE s.name = m.shard AND s.mixture = m.mixture AND s.stage = m.stage""")
    assert ts == independent == [{"mixture": "m", "stage": "2", "sample_id": "a/q0", "shard_path": "/shards/m-000000.tar"}]
    [group] = cat.query("SELECT * FROM dedup_groups")
    assert (group["policy"], group["task"], group["group_key"], group["group_size"], group["n_kept"]) == ("p", "qa", "h1", 2, 1)
    assert (group["sample_ids"], group["ppls"], group["kept"]) == (["a/q0", "a/q1"], [3.0, 5.0], [True, False])
    assert group["reasons"] == ["lowest_ppl", "higher_ppl"]


def test_every_column_of_the_shipped_tables_and_views_has_a_comment(tmp_path):
    """Applied only up to this project's comment file, so columns added by later schema files are their own
    files' business; every table, view and column of these has a comment."""
    schema = tmp_path / "schema"
    schema.mkdir()
    for f in SCHEMA_DIR.glob("*.sql"):
        if int(f.name[:4]) <= 21:
            shutil.copy(f, schema)
    with Catalog(tmp_path / "c.duckdb", schema_dir=schema) as c:
        bare = c.query("SELECT table_name, column_name FROM duckdb_columns() WHERE NOT internal AND comment IS NULL")
        bare_relations = c.query("""SELECT table_name FROM duckdb_tables() WHERE NOT internal AND comment IS NULL
                                    UNION ALL SELECT view_name FROM duckdb_views() WHERE NOT internal AND comment IS NULL""")
        comment, (columns, rows) = describe(c, "dedup_groups")
    assert bare == [] and bare_relations == []
    assert comment.startswith("Duplicate groups side by side")
    assert columns == ["column", "type", "nullable", "comment"] and rows[0][0] == "policy" and rows[-1][0] == "reasons"


def test_sample_card_sections(cat):
    sections = {s.title: s for s in sample_card(cat, "a/q0")}
    first = sections["Sample a/q0"]
    assert first.tables[0][1] == [["a", "q0", "qa", "llava_json", "/data/a.json", None]]
    assert [r[1:] for r in first.tables[1][1]] == [["human", "<image>\nWhat colour?"], ["gpt", "Red."]]
    assert sections["Media"].tables[0][1][0][:4] == [0, "h1", "image", "64x48"]
    assert [r[:2] for r in sections["Perplexity"].tables[0][1]] == [["old", "v1"], ["new", "v1"]]
    assert sections["Dedup"].tables[0][1][0][:3] == ["p", True, "lowest_ppl"]
    assert sections["Mixtures and shards"].tables[0][1] == [["m", "2", 0, "p", "lowest_ppl", "m-000000.tar",
                                                              "/shards/m-000000.tar"]]
    assert sections["DPO pairs"].tables[0][1][0][:3] == ["ps/a/q0/0", "Red.", "Blue."]
    assert not sections["Quarantine"].has_data and not sections["Held out"].has_data
    refused = {s.title: s for s in sample_card(cat, "b/c0")}["Quarantine"]
    assert [r[:2] for r in refused.tables[0][1]] == [["shards", "video_decode"]]


def test_unknown_and_refused_ids(cat):
    [only] = sample_card(cat, "a/bad")  # refused at ingest: no sample row, its quarantine record
    assert only.title == "Quarantine" and only.tables[0][1][0][:2] == ["ingest", "truncated_image"]
    with pytest.raises(KeyError) as e:
        sample_card(cat, "q")
    assert error_line(e.value) == f"sample 'q' is not in the catalog {cat.path} (did you mean a/q0, a/q1?)"
    with pytest.raises(KeyError, match="no table or view 'nope'"):
        describe(cat, "nope")


def test_run_query_limit(cat):
    assert run_query(cat, "SELECT sample_id FROM samples ORDER BY 1", limit=2) == (["sample_id"], [["a/q0"], ["a/q1"]], True)
    assert run_query(cat, "SELECT count(*) AS n FROM samples") == (["n"], [[4]], False)


def test_cli_query_describe_show(small, tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"work_dir": str(tmp_path), "catalog_path": str(small)}))

    def run(*args):
        return CliRunner().invoke(app, ["--config", str(settings), "catalog", *args], env={"COLUMNS": "200"})

    out = run("query", "SELECT source, count(*) AS n FROM samples GROUP BY source ORDER BY source")
    assert out.exit_code == 0, out.output
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in out.output.splitlines() if line.startswith("│")]
    assert cells == [["a", "3"], ["b", "1"]] and "2 rows" in out.output
    refused = run("query", "DELETE FROM samples")
    assert refused.exit_code != 0 and "read-only" in error_line(refused.exception)
    with Catalog(small, read_only=True) as c:
        assert c.scalar("SELECT count(*) FROM samples") == 4
    listing = run("describe")
    assert listing.exit_code == 0 and "training_set" in listing.output and "sample_overview" in listing.output
    one = run("describe", "training_set")
    assert one.exit_code == 0 and "shard_path" in one.output and "shards.path of that shard" in one.output
    shown = run("show", "a/q0")
    assert shown.exit_code == 0, shown.output
    assert "lowest_ppl" in shown.output and "m-000000.tar" in shown.output and "Quarantine: never refused" in shown.output
    missing = run("show", "zzz")
    assert missing.exit_code != 0 and error_line(missing.exception).startswith("sample 'zzz' is not in the catalog")
