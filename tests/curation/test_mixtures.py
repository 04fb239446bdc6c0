"""Mixture manifests and the seeded draw, checked against a selection recomputed here with hashlib.

    pytest tests/curation/test_mixtures.py -q
"""
from __future__ import annotations

import hashlib
import json

import pytest

from core.config import ConfigError
from curation.mixtures import MixtureConfig, MixtureError, load_mixture, parse_ratio, select_mixture
from core.paths import MANIFESTS

MIXTURES = MANIFESTS / "mixtures"


@pytest.mark.parametrize("path", sorted(MIXTURES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_mixtures_load(path):
    m = load_mixture(path)
    assert m.stages and all(m.stages.values())


def test_paper_table6_transcription():
    m = load_mixture(MIXTURES / "paper-table6.yaml")
    counts = {s: {e.source: e.count for e in es} for s, es in m.stages.items()}
    # Numbers typed from Table 6 of the paper (not read back from the YAML's notes).
    assert counts["1"]["laion_en"] == 6_700_000 and counts["1"]["laion_zh"] == 3_200_000
    assert counts["1"]["omega_image_caption"] == 79_000_000 and counts["1"]["panda_70m"] == 900_000
    assert sum(counts["1"].values()) == 126_900_000 + 6_500_000  # image captions + video captions
    assert counts["1.5"]["cc12m"] == 1_000_000 and counts["2"]["openmathinstruct_2"] == 2_000_000
    # App. A: these four are trained on the captions the authors' pipeline synthesized
    assert {e.source for e in m.stages["1.5"] if e.captions == "synthesized"} == {"cc12m", "celebv", "hacs",
                                                                                  "kinetics_700"}
    assert all(e.captions == "original" for s, es in m.stages.items() if s != "1.5" for e in es)
    assert counts["2"]["anytext"] == 300_000
    assert sum(counts["dpo"].values()) == 50_000  # 10K + 10K + 10K + 8K + 8K + 4K
    # Datasets the table lists without a count are marked as such.
    assert sum(c == "all" for c in counts["1.5"].values()) == 36  # all but CC12M (1M)
    assert sum(c == "all" for c in counts["2"].values()) == 19  # all but OpenMathInstruct-2 and AnyText
    assert len(counts["1"]) == 11 and len(counts["1.5"]) == 37 and len(counts["2"]) == 21 and len(counts["dpo"]) == 6
    assert all(e.note for es in m.stages.values() for e in es)


@pytest.mark.parametrize("entry, field, words", [
    ("{source: a, count: -3}", "stages.2.0.count", "greater than or equal to 0"),
    ("{source: a, ratio: abc}", "stages.2.0.ratio", "not a number, a percentage"),
    ("{source: a, ratio: 1.5}", "stages.2.0.ratio", "(0, 1]"),
    ("{source: a, count: 3, colour: red}", "stages.2.0.colour", "Extra inputs"),
    ("{source: a, count: 3, ratio: 0.5}", "stages.2.0", "exactly one of count"),
])
def test_bad_manifest_names_file_and_field(tmp_path, entry, field, words):
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\nstages:\n  2:\n    - {entry}\n")
    with pytest.raises(ConfigError) as e:
        load_mixture(path)
    assert str(path) in str(e.value) and f"'{field}" in str(e.value) and words in str(e.value)


def test_synthesized_captions_entry(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("name: m\nstages:\n  1.5:\n    - {source: kinetics_like, captions: synthesized, count: all}\n")
    entry = load_mixture(path).stages["1.5"][0]
    assert entry.source == "kinetics_like" and entry.catalog_source() == "kinetics_like+synth"
    # the catalog name itself is no source name, and `captions` takes only its two values
    path.write_text("name: m\nstages:\n  1.5:\n    - {source: kinetics_like+synth, count: all}\n")
    assert "'stages.1.5.0.source'" in str(pytest.raises(ConfigError, load_mixture, path).value)
    path.write_text("name: m\nstages:\n  1.5:\n    - {source: k, captions: merged, count: all}\n")
    assert "'stages.1.5.0.captions'" in str(pytest.raises(ConfigError, load_mixture, path).value)


def test_selection_hash_of_original_entries_is_unchanged():
    """Mixtures selected before ``captions`` existed keep their hash (no forced --replace); the key is
    written out here as it was hashed then."""
    m = MixtureConfig.model_validate({"name": "m", "seed": 3, "stages": {"2": [{"source": "A", "count": 5}]}})
    key = {"seed": 3, "dedup_policy": "p", "stages": {"2": [{"source": "A", "count": 5, "ratio": None,
                                                               "tasks": None}]}}
    assert m.selection_sha256("p") == hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    synth = MixtureConfig.model_validate({"name": "m", "seed": 3, "stages": {"2": [
        {"source": "A", "count": 5, "captions": "synthesized"}]}})
    assert synth.selection_sha256("p") != m.selection_sha256("p")


def test_unknown_top_level_key_and_stage(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nseeds: 3\nstages:\n  3: [{source: a, count: 1}]\n")
    msg = str(pytest.raises(ConfigError, load_mixture, path).value)
    assert "field 'seeds'" in msg and "field 'stages.3.[key]'" in msg


@pytest.mark.parametrize("text, value", [(0.25, 0.25), ("25%", 0.25), ("1/4", 0.25), ("0.25", 0.25), (1, 1.0)])
def test_parse_ratio(text, value):
    assert parse_ratio(text) == pytest.approx(value)


# -- selection against a hand-built catalog --------------------------------------------------------------
def _md5_order(seed: int, ids):
    return sorted(ids, key=lambda s: (hashlib.md5(f"{seed}:{s}".encode()).hexdigest(), s))


def _fill(cat, *, decisions: bool = True, heldout: bool = False):
    """Sources A (24 samples, qa/caption alternating) and B (10 captions); quarantine, dedup, held-out rows."""
    cat.insert("sources", [{"name": n, "modality": "image", "task": "qa", "format": "llava_json", "path": "x"}
                           for n in ("A", "B")])
    rows = [{"sample_id": f"A/{i:03d}", "source": "A", "item": f"{i:03d}", "task": "qa" if i % 2 else "caption",
             "conversation": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
             "media_hashes": [f"m{i}"], "content_sha256": "x"} for i in range(24)]
    rows += [{"sample_id": f"B/{i:03d}", "source": "B", "item": f"{i:03d}", "task": "caption",
              "conversation": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
              "media_hashes": [f"n{i}"], "content_sha256": "x"} for i in range(10)]
    cat.insert("samples", rows)
    cat.quarantine([{"source": "A", "item": "001", "reason": "undecodable_image", "detail": "t", "stage": "ingest"}])
    dropped = {"A/003", "A/005", "B/002"}
    if decisions:
        cat.insert("dedup_decisions", [{
            "policy": "paper", "sample_id": r["sample_id"], "source": r["source"], "task": r["task"],
            "group_size": 1, "rule": "keep_k_lowest", "kept": r["sample_id"] not in dropped,
            "reason": "above_k" if r["sample_id"] in dropped else "unique", "seed": 0, "grouping": "exact",
            "scorer": "s", "template_version": "t", "text_scope": "answer"} for r in rows])
    if heldout:  # the eval area's table (schema 0007): A/007 itself, and another set's sample sharing B/004's media
        cat.insert("heldout", [{"family": "image_qa", "sample_id": "A/007", "media_hash": "m7", "split": "h", "seed": 0},
                               {"family": "image_caption", "sample_id": "X/000", "media_hash": "n4", "split": "h",
                                "seed": 0}])
    return rows, dropped


def _mixture(**over) -> MixtureConfig:
    data = {"name": "mix", "seed": 7, "stages": {
        "2": [{"source": "A", "count": 5, "tasks": ["qa"]}, {"source": "B", "ratio": "1/2"},
              {"source": "C", "count": 3}],
        "dpo": [{"source": "A", "count": "all", "tasks": ["qa"]}]}}
    data.update(over)
    return MixtureConfig.model_validate(data)


def _members(cat, stage):
    return {r["sample_id"] for r in cat.query("SELECT sample_id FROM mixture_members WHERE stage = ?", [stage])}


def test_selection_matches_independent_draw(catalog):
    rows, dropped = _fill(catalog, heldout=True)
    sel = select_mixture(catalog, _mixture())
    excluded = dropped | {"A/001", "A/007", "B/004"}  # dedup drops, quarantine, held out (id and media)
    eligible_a = [r["sample_id"] for r in rows if r["source"] == "A" and r["task"] == "qa"
                  and r["sample_id"] not in excluded]
    eligible_b = [r["sample_id"] for r in rows if r["source"] == "B" and r["sample_id"] not in excluded]
    assert _members(catalog, "2") == set(_md5_order(7, eligible_a)[:5]) | set(_md5_order(7, eligible_b)[:4])
    assert _members(catalog, "dpo") == set(eligible_a)
    table = {(e.stage, e.source): (e.available, e.selected, e.status) for e in sel.entries}
    assert table == {("2", "A"): (len(eligible_a), 5, "ok"), ("2", "B"): (8, 4, "ok"), ("2", "C"): (0, 0, "absent"),
                     ("dpo", "A"): (len(eligible_a), len(eligible_a), "ok")}
    assert "absent" in sel.table() and sel.dedup_policy == "paper"
    assert sel.shortfalls() == ["stage 2: source C is absent (requested 3, available 0)"]
    # Every member traces back to the dedup decision that admitted it.
    refs = catalog.query("SELECT DISTINCT dedup_policy, dedup_reason FROM mixture_members")
    assert refs == [{"dedup_policy": "paper", "dedup_reason": "unique"}]
    # Same config again: reused, nothing redrawn.
    assert select_mixture(catalog, _mixture()).reused


def test_count_grows_as_a_prefix_and_short_is_reported(catalog):
    _fill(catalog)
    small = select_mixture(catalog, _mixture(name="s", stages={"2": [{"source": "B", "count": 3}]}))
    big = select_mixture(catalog, _mixture(name="b", stages={"2": [{"source": "B", "count": 50}]}))
    members = {m: {r["sample_id"] for r in catalog.query("SELECT sample_id FROM mixture_members WHERE mixture=?",
                                                             [m])} for m in ("s", "b")}
    assert members["s"] < members["b"] and len(members["b"]) == 9
    assert small.entries[0].status == "ok" and big.entries[0].status == "short"


def test_strict_fails_and_writes_nothing(catalog):
    _fill(catalog)
    with pytest.raises(MixtureError, match="stage 2 C: absent"):
        select_mixture(catalog, _mixture(), strict=True)
    assert catalog.scalar("SELECT count(*) FROM mixture_members") == 0
    assert catalog.scalar("SELECT count(*) FROM mixtures") == 0


def test_changed_config_needs_replace(catalog):
    _fill(catalog)
    select_mixture(catalog, _mixture())
    with pytest.raises(MixtureError, match="different config"):
        select_mixture(catalog, _mixture(seed=8))
    select_mixture(catalog, _mixture(seed=8), replace=True)
    assert catalog.scalar("SELECT seed FROM mixtures WHERE name = 'mix'") == 8


def test_without_decisions_every_unquarantined_sample_with_a_warning(catalog):
    rows, _ = _fill(catalog, decisions=False)
    sel = select_mixture(catalog, _mixture(stages={"1": [{"source": "A", "count": "all"}]}))
    assert sel.dedup_policy is None and "no deduplication decisions" in sel.warnings[0]
    assert _members(catalog, "1") == {r["sample_id"] for r in rows if r["source"] == "A"} - {"A/001"}


def test_several_policies_must_be_named(catalog):
    _fill(catalog)
    catalog.con.execute("INSERT INTO dedup_decisions SELECT * REPLACE ('other' AS policy) FROM dedup_decisions")
    with pytest.raises(MixtureError, match="several dedup policies"):
        select_mixture(catalog, _mixture())
    with pytest.raises(MixtureError, match="has no decisions"):
        select_mixture(catalog, _mixture(dedup_policy="nope"))
    assert select_mixture(catalog, _mixture(dedup_policy="other")).dedup_policy == "other"


def test_rerun_reports_availability_of_now_and_replace_redraws_the_same_config(catalog):
    rows, dropped = _fill(catalog)
    first = select_mixture(catalog, _mixture())
    before = _members(catalog, "2")
    new = [{"sample_id": f"B/{i:03d}", "source": "B", "item": f"{i:03d}", "task": "caption",
            "conversation": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
            "media_hashes": [f"n{i}"], "content_sha256": "x"} for i in range(10, 16)]
    catalog.insert("samples", new)
    catalog.insert("dedup_decisions", [{
        "policy": "paper", "sample_id": r["sample_id"], "source": "B", "task": "caption", "group_size": 1,
        "rule": "keep_k_lowest", "kept": True, "reason": "unique", "seed": 0, "grouping": "exact", "scorer": "s",
        "template_version": "t", "text_scope": "answer"} for r in new])
    eligible_b = [r["sample_id"] for r in rows + new if r["source"] == "B" and r["sample_id"] not in dropped]
    assert len(eligible_b) == 15 and first.entries[1].available == 9

    again = select_mixture(catalog, _mixture())  # reused: the old draw, today's availability
    assert again.reused and _members(catalog, "2") == before
    b = again.entries[1]
    assert (b.source, b.available, b.selected) == ("B", 15, 4)
    assert any("stage 2 source B: 15 samples eligible now, 9 when" in w and "--replace" in w for w in again.warnings)

    redrawn = select_mixture(catalog, _mixture(), replace=True)
    eligible_a = [r["sample_id"] for r in rows if r["source"] == "A" and r["task"] == "qa"
                  and r["sample_id"] not in dropped | {"A/001"}]
    assert not redrawn.reused and redrawn.entries[1].selected == 7  # floor(15 / 2)
    assert _members(catalog, "2") == set(_md5_order(7, eligible_a)[:5]) | set(_md5_order(7, eligible_b)[:7])
    assert select_mixture(catalog, _mixture()).warnings == []  # nothing changed since the redraw
