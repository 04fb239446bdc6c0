"""Tests of the PPL dedup policy (curation/dedup.py) on hand-built groups, and of near-duplicate grouping.

    pytest tests/curation/test_dedup.py -q

Expected decisions are worked out by hand here; the random pick is recomputed
independently with ``hashlib.md5('<seed>:<sample_id>')``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from core.paths import MANIFESTS
from core.catalog import Catalog
from tests.conftest import copy_catalog
from curation.dedup import (
    DedupPolicy, TaskRule, UnscoredSamplesError, explain, format_explanation, load_policy, report, run_policy,
)

SCORER = "s"


def policy(**kw) -> DedupPolicy:
    base = dict(name="t", scorer=SCORER, seed=0, tasks={
        "qa": TaskRule(rule="keep_k_lowest", k=2), "caption": TaskRule(rule="random_one_of_k_lowest", k=2)})
    base.update(kw)
    return DedupPolicy(**base)


def add(cat: Catalog, *rows: tuple[str, str, list[str], float | None]) -> None:
    """Insert samples (sample_id, task, media hashes, PPL or None) and their scores, in one statement each."""
    samples, scores = [], []
    for sample_id, task, media, ppl in rows:
        source, item = sample_id.split("/")
        samples.append({"sample_id": sample_id, "source": source, "item": item, "task": task,
                        "conversation": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
                        "media_hashes": media, "content_sha256": "-"})
        if ppl is not None:
            scores.append({"sample_id": sample_id, "scorer": SCORER, "template_version": "llava2chat-v1",
                           "text_scope": "answer", "ppl": ppl, "mean_nll": 0.5, "n_tokens": 4,
                           "backend": "transformers", "model_path": "-"})
    cat.insert("samples", samples)
    cat.insert("ppl_scores", scores)


def decisions(cat: Catalog, name: str = "t") -> dict[str, dict]:
    return {r["sample_id"]: r for r in cat.query("SELECT * FROM dedup_decisions WHERE policy = ?", [name])}


def kept(cat: Catalog, name: str = "t") -> set[str]:
    return {s for s, r in decisions(cat, name).items() if r["kept"]}


def md5_pick(seed: int, ids: list[str]) -> str:
    return min(ids, key=lambda s: hashlib.md5(f"{seed}:{s}".encode()).hexdigest())


def test_qa_keeps_the_two_lowest_ppl(catalog):
    for sid, ppl in [("a/1", 3.0), ("b/1", 1.5), ("c/1", 2.0), ("d/1", 9.0)]:
        add(catalog, (sid, "qa", ["h1"], ppl))
    run_policy(catalog, policy())
    d = decisions(catalog)
    assert kept(catalog) == {"b/1", "c/1"}
    assert [d[s]["rank"] for s in ("b/1", "c/1", "a/1", "d/1")] == [1, 2, 3, 4]
    assert {s: d[s]["reason"] for s in d} == {"b/1": "lowest_k", "c/1": "lowest_k", "a/1": "above_k",
                                               "d/1": "above_k"}
    assert all(r["group_key"] == "h1" and r["group_size"] == 4 for r in d.values())


def test_caption_keeps_one_random_of_the_two_lowest(catalog):
    ppls = {"a/1": 4.0, "b/1": 2.0, "c/1": 3.0, "d/1": 8.0}
    for sid, ppl in ppls.items():
        add(catalog, (sid, "caption", ["h1"], ppl))
    for seed in range(6):
        run_policy(catalog, policy(seed=seed))
        expected = md5_pick(seed, ["b/1", "c/1"])  # the two lowest PPLs
        assert kept(catalog) == {expected}
        d = decisions(catalog)
        other = ({"b/1", "c/1"} - {expected}).pop()
        assert d[expected]["reason"] == "random_pick" and d[other]["reason"] == "not_picked"
        assert d["a/1"]["reason"] == d["d/1"]["reason"] == "above_k"


def test_seed_changes_the_pick_reproducibly(catalog):
    groups = {f"g{i}": [f"x/{i}a", f"y/{i}b"] for i in range(40)}
    add(catalog, *[(sid, "caption", [g], 2.0 + sid.endswith("b")) for g, ids in groups.items() for sid in ids])
    picks = {}
    for seed in (0, 1):
        run_policy(catalog, policy(seed=seed))
        picks[seed] = kept(catalog)
        assert picks[seed] == {md5_pick(seed, ids) for ids in groups.values()}
    assert picks[0] != picks[1]
    run_policy(catalog, policy(seed=0))
    assert kept(catalog) == picks[0]


def test_ties_break_by_sample_id(catalog):
    for sid in ("c/1", "a/1", "b/1"):
        add(catalog, (sid, "qa", ["h1"], 2.0))
    for sid in ("c/2", "a/2", "b/2"):
        add(catalog, (sid, "caption", ["h1"], 2.0))
    run_policy(catalog, policy())
    d = decisions(catalog)
    assert [d[s]["rank"] for s in ("a/1", "b/1", "c/1")] == [1, 2, 3]
    assert kept(catalog) == {"a/1", "b/1", md5_pick(0, ["a/2", "b/2"])}


def test_groups_smaller_than_k(catalog):
    add(catalog, ("a/1", "qa", ["h1"], 5.0))
    add(catalog, ("b/1", "qa", ["h1"], 1.0))       # group of 2 == k: both kept
    add(catalog, ("a/2", "qa", ["h2"], 7.0))       # alone
    add(catalog, ("a/3", "caption", ["h3"], 7.0))  # alone
    add(catalog, ("a/4", "caption", ["h4"], 3.0))
    add(catalog, ("b/4", "caption", ["h4"], 2.0))
    add(catalog, ("c/4", "caption", ["h4"], 1.0))
    run_policy(catalog, policy(tasks={"qa": TaskRule(rule="keep_k_lowest", k=3),
                                      "caption": TaskRule(rule="random_one_of_k_lowest", k=5)}))
    d = decisions(catalog)
    assert d["a/1"]["reason"] == d["b/1"]["reason"] == "lowest_k"
    assert d["a/2"]["reason"] == d["a/3"]["reason"] == "unique"
    assert kept(catalog) == {"a/1", "b/1", "a/2", "a/3", md5_pick(0, ["a/4", "b/4", "c/4"])}


def test_pick_is_stable_under_insertion_order_and_unrelated_samples(tmp_path):
    rows = [(f"s{j}/{i}", "caption" if i % 2 else "qa", [f"h{i % 5}"], 1.0 + ((i * 7 + j * 3) % 11) / 3)
            for i in range(30) for j in range(3)]
    with Catalog(tmp_path / "a.duckdb") as a:
        add(a, *rows)
        run_policy(a, policy(seed=3))
        first = {s: (r["kept"], r["rank"], r["reason"]) for s, r in decisions(a).items()}
    with Catalog(tmp_path / "b.duckdb") as b:
        extra = [(f"z{j}/{i}", "caption" if i % 2 else "qa", [f"other{i}"], 1.5 + j) for i in range(20)
                 for j in range(3)]
        for part in (list(reversed(rows))[:40], extra[:30], list(reversed(rows))[40:], extra[30:]):
            add(b, *part)  # another insertion order, unrelated samples interleaved
        run_policy(b, policy(seed=3))
        second = {s: (r["kept"], r["rank"], r["reason"]) for s, r in decisions(b).items()}
    assert {s: v for s, v in second.items() if s in first} == first
    assert len(second) == len(first) + 60


def test_multi_media_groups_by_ordered_tuple(catalog):
    add(catalog, ("a/1", "qa", ["h1", "h2"], 1.0))
    add(catalog, ("b/1", "qa", ["h1", "h2"], 2.0))
    add(catalog, ("c/1", "qa", ["h1", "h2"], 3.0))
    add(catalog, ("d/1", "qa", ["h2", "h1"], 4.0))  # other order: another sample
    add(catalog, ("e/1", "qa", ["h1"], 5.0))        # a subset: another group
    run_policy(catalog, policy())
    d = decisions(catalog)
    assert d["a/1"]["group_key"] == "h1+h2" and d["d/1"]["group_key"] == "h2+h1"
    assert kept(catalog) == {"a/1", "b/1", "d/1", "e/1"}


def test_synthesized_captions_follow_their_origin(catalog):
    """A re-caption (caption_samples row) is not ranked against its origin: it takes the origin's decision,
    even with the lowest PPL of the group or with no score at all (policy ``unscored: error``)."""
    add(catalog, ("k/1", "caption", ["h1"], 3.0), ("o/1", "caption", ["h1"], 2.0), ("k+synth/1", "caption", ["h1"], 1.0),
        ("k/2", "caption", ["h2"], 5.0), ("k+synth/2", "caption", ["h2"], None))
    catalog.insert("caption_samples", [{"sample_id": f"k+synth/{i}", "media_hash": f"h{i}", "from_sample": f"k/{i}",
                                        "merge_id": f"m{i}"} for i in (1, 2)])
    run_policy(catalog, policy())
    d = decisions(catalog)
    pick = md5_pick(0, ["k/1", "o/1"])  # the two originals are the whole ranked group
    assert kept(catalog) == {pick, "k/2", "k+synth/2"} | ({"k+synth/1"} if pick == "k/1" else set())
    assert d["k+synth/1"]["reason"] == ("origin_kept" if pick == "k/1" else "origin_dropped")
    assert d["k+synth/1"]["rank"] is None and d["k+synth/1"]["group_key"] == "h1"
    assert d["k/1"]["group_size"] == 2 and d["k/2"]["reason"] == "unique" and d["k+synth/2"]["reason"] == "origin_kept"


def test_tasks_rank_separately_and_unnamed_tasks_keep_all(catalog):
    for i, sid in enumerate(("a/1", "b/1", "c/1")):
        add(catalog, (sid, "qa", ["h1"], 1.0 + i))
        add(catalog, (sid.replace("/1", "/2"), "ocr", ["h1"], 1.0 + i))
    add(catalog, ("t/1", "qa", [], None))  # text-only
    run_policy(catalog, policy())
    d = decisions(catalog)
    assert kept(catalog) == {"a/1", "b/1", "a/2", "b/2", "c/2", "t/1"}
    assert {d[s]["reason"] for s in ("a/2", "b/2", "c/2")} == {"keep_all"}
    assert d["t/1"]["reason"] == "no_media" and d["t/1"]["group_key"] is None
    assert d["a/1"]["group_size"] == 3


def test_unscored_samples(catalog):
    add(catalog, ("a/1", "qa", ["h1"], 2.0))
    add(catalog, ("b/1", "qa", ["h1"], 3.0))
    add(catalog, ("c/1", "qa", ["h1"], 4.0))
    add(catalog, ("u/1", "qa", ["h1"], None))
    add(catalog, ("u/2", "qa", ["h2"], None))  # alone: needs no score
    run_policy(catalog, policy(unscored="keep"))
    before = decisions(catalog)
    assert kept(catalog) == {"a/1", "b/1", "u/1", "u/2"}
    assert before["u/1"]["reason"] == "unscored_kept" and before["u/1"]["rank"] is None
    assert before["u/2"]["reason"] == "unique"
    with pytest.raises(UnscoredSamplesError, match="1 samples .* u/1"):
        run_policy(catalog, policy(unscored="error"))
    assert decisions(catalog) == before  # the failed run wrote nothing
    run_policy(catalog, policy(unscored="drop"))
    assert kept(catalog) == {"a/1", "b/1", "u/2"}


def test_quarantined_at_scoring_are_dropped_and_not_ranked(catalog):
    add(catalog, ("a/1", "qa", ["h1"], 1.0))
    add(catalog, ("b/1", "qa", ["h1"], 2.0))
    add(catalog, ("c/1", "qa", ["h1"], 3.0))
    add(catalog, ("q/1", "qa", ["h1"], None))
    catalog.quarantine([{"source": "a", "item": "1", "reason": "media_decode_failed", "detail": "x", "stage": "ppl"},
                        {"source": "q", "item": "1", "reason": "media_decode_failed", "detail": "x", "stage": "ppl"}])
    run_policy(catalog, policy())
    d = decisions(catalog)
    assert kept(catalog) == {"b/1", "c/1"}
    assert d["a/1"]["reason"] == d["q/1"]["reason"] == "quarantined"
    assert (d["b/1"]["rank"], d["c/1"]["rank"]) == (1, 2)


def test_policies_keep_their_own_rows(catalog):
    for i, sid in enumerate(("a/1", "b/1", "c/1")):
        add(catalog, (sid, "qa", ["h1"], 1.0 + i))
    run_policy(catalog, policy(name="one"))
    run_policy(catalog, policy(name="all", tasks={}))
    run_policy(catalog, policy(name="one"))
    counts = dict(catalog.con.execute("SELECT policy, count(*) FROM dedup_decisions GROUP BY policy").fetchall())
    assert counts == {"one": 3, "all": 3}
    assert kept(catalog, "one") == {"a/1", "b/1"} and kept(catalog, "all") == {"a/1", "b/1", "c/1"}


def test_explain_and_report(catalog, tmp_path):
    for sid, ppl in [("a/1", 3.0), ("b/1", 1.0), ("c/1", 2.0)]:
        add(catalog, (sid, "qa", ["h1"], ppl))
    add(catalog, ("a/2", "caption", ["h1"], 1.0))
    add(catalog, ("b/2", "caption", ["h1"], 1.25))
    run_policy(catalog, policy())
    info = explain(catalog, "a/1")
    assert [m["sample_id"] for m in info["members"]] == ["b/1", "c/1", "a/1"]
    text = format_explanation(info)
    assert "a/1: DROPPED (above_k)" in text and "3.0000" in text and "task caption" in text
    # an id the catalog does not know, a refused item and a sample ingested after the run: three messages
    with pytest.raises(ValueError, match=r"^sample 'nope/1' is not in the catalog .*sample ids are '<source>/<item>'"):
        explain(catalog, "nope/1")
    catalog.quarantine([{"source": "nope", "item": "2", "reason": "zero_byte", "detail": "", "stage": "ingest",
                         "run_id": None}])
    with pytest.raises(ValueError, match=r"^sample 'nope/2' is not in the catalog .*: it was quarantined \(ingest "
                                         r"zero_byte\)$"):
        explain(catalog, "nope/2")
    add(catalog, ("d/1", "qa", ["h2"], 1.0))
    with pytest.raises(ValueError, match=r"^sample 'd/1' is not decided yet under policy 't': it was ingested after "
                                         r"the last `mavors dedup run`; run it again$"):
        explain(catalog, "d/1")
    rep = report(catalog, tmp_path / "rep")
    assert (rep["groups"], rep["shared_groups"], rep["samples_in_shared_groups"]) == (1, 1, 5)
    assert sum(r["kept"] + r["dropped"] for r in rep["by_source_task"]) == 5
    assert {(r["source"], r["task"]): (r["kept"], r["dropped"]) for r in rep["by_source_task"]}[("a", "qa")] == (0, 1)
    assert Path(rep["histogram"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["policy"] == "t"


def test_shipped_policies_load():
    paths = sorted((MANIFESTS / "dedup").glob("*.yaml"))
    assert paths
    for path in paths:
        p = load_policy(path)
        assert p.tasks["qa"].rule == "keep_k_lowest" and p.tasks["caption"].rule == "random_one_of_k_lowest"
    from curation.perplexity import load_scorer_config

    scorers = MANIFESTS / "dedup" / "scorers"
    expected = {"tiny-qwen2vl.yaml": "/w/models/qwen2vl", "qwen2vl-72b.yaml": "/models/Qwen2-VL-72B-Instruct"}
    assert sorted(p.name for p in scorers.glob("*.yaml")) == sorted(expected)
    for name, model_path in expected.items():  # {work_dir} is the settings' work dir; absolute paths stay
        assert str(load_scorer_config(scorers / name, work_dir="/w").engine.model_path) == model_path


@pytest.fixture(scope="module")
def demo_decisions(demo_catalog, demo_corpus, tmp_path_factory):
    """The demo catalog with every sample given a PPL, exact and near-duplicate policies run."""
    import shutil

    from curation.phash import build_clusters, compute_signatures

    path = tmp_path_factory.mktemp("dedup-demo") / "catalog.duckdb"
    copy_catalog(demo_catalog, path)
    with Catalog(path) as cat:
        ids = [r["sample_id"] for r in cat.query("SELECT sample_id FROM samples ORDER BY sample_id")]
        cat.insert("ppl_scores", [{"sample_id": sid, "scorer": SCORER, "template_version": "llava2chat-v1",
                                   "text_scope": "answer", "ppl": 1.0 + (i * 37 % 101) / 10, "mean_nll": 0.5,
                                   "n_tokens": 4, "backend": "transformers", "model_path": "-"}
                                  for i, sid in enumerate(ids)])
        assert compute_signatures(cat)["failed"] == 0
        build_clusters(cat, 32)
        run_policy(cat, policy(name="exact"))
        run_policy(cat, policy(name="near", grouping="phash", phash_max_distance=32))
        yield cat, json.loads((demo_corpus / "planted_duplicates.json").read_text())


def test_demo_planted_exact_duplicates_are_all_found(demo_decisions):
    cat, planted = demo_decisions
    d = decisions(cat, "exact")
    assert planted["exact"]
    for dup in planted["exact"]:
        shared = set.intersection(*(set(d[sid]["group_key"].split("+")) for sid in dup["samples"]))
        assert len(shared) == 1, dup  # one media hash in common: found as the same media
        single = [sid for sid in dup["samples"] if "+" not in d[sid]["group_key"]]
        assert len({d[sid]["group_key"] for sid in single}) == 1, dup  # single-media samples: one group
    # every sample got exactly one decision
    assert len(d) == cat.scalar("SELECT count(*) FROM samples")


def test_demo_planted_near_duplicates_group_only_with_phash(demo_decisions):
    cat, planted = demo_decisions
    exact, near = decisions(cat, "exact"), decisions(cat, "near")
    assert planted["near"]
    for dup in planted["near"]:
        a, b = dup["samples"]
        assert exact[a]["group_key"] != exact[b]["group_key"]
        assert near[a]["group_key"] == near[b]["group_key"], dup
    # nothing else merged: near groups differ from exact groups only by the planted pairs
    merged = cat.scalar("SELECT count(*) FROM media_clusters WHERE max_distance = 32 AND cluster_key <> media_hash")
    assert merged == len(planted["near"])


def test_signature_distance_by_hand():
    import numpy as np

    from curation.phash import THUMB, cluster, distance

    a = np.zeros((2, THUMB, THUMB, 3), np.uint8)
    b = a.copy()
    b[1, 3, 4, 2] = 40
    c = a.copy()
    c[0, 0, 0, 0] = 41
    assert distance(a, b) == 40 and distance(b, c) == 41
    keys = cluster({"h3": ("video", a), "h1": ("video", b), "h2": ("video", c), "h0": ("image", a[:1])}, 40)
    assert keys == {"h1": "h1", "h3": "h1", "h2": "h2", "h0": "h0"}
