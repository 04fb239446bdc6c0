"""Report sections over the ingested demo catalog: the ``catalog stats`` tables agree with counts made here
from the corpus truth and the samples, and every way of showing them (data, console, flow records) agrees."""
from __future__ import annotations

import hashlib
import json
import tarfile
from collections import Counter

from core.catalog import Catalog
from pipelines.report.sections import CATALOG_STATS, RUN_REPORT, Section, build_sections, catalog_stats, section


def _media_bytes(root, rel: str) -> bytes:
    """A corpus media file's bytes; ``shard.tar:member`` names a tar member."""
    if ".tar:" in rel:
        tar_rel, member = rel.split(":", 1)
        with tarfile.open(root / tar_rel) as tar:
            return tar.extractfile(member).read()
    return (root / rel).read_bytes()


def _stats(path) -> dict[str, Section]:
    with Catalog(path, read_only=True) as cat:
        return {s.title.split(" (")[0]: s for s in build_sections(cat, CATALOG_STATS) if s.has_data}


def test_stats_sections_agree_with_an_independent_count(demo_catalog, demo_corpus):
    truth = json.loads((demo_corpus / "corpus.json").read_text())
    sections = _stats(demo_catalog)
    with Catalog(demo_catalog, read_only=True) as c:
        samples = c.query("SELECT sample_id, source, media_hashes FROM samples")
    by_hash: dict[str, set] = {}
    for s in samples:
        for h in s["media_hashes"]:
            by_hash.setdefault(h, set()).add(s["sample_id"])
    groups = [g for g in by_hash.values() if len(g) > 1]
    (_, dup), = sections["Duplicate media"].tables
    assert sum(r[1] for r in dup) == len(groups)
    assert sum(r[2] for r in dup) == sum(len(g) for g in groups)
    (_, quarantined), = sections["Quarantine"].tables
    assert {r[1]: r[2] for r in quarantined} == dict(Counter(truth["quarantine"].values()))
    (_, per_source), = sections["Sources"].tables
    assert {r[0]: r[4] for r in per_source} == dict(Counter(s["source"] for s in samples))
    distinct: dict[str, set[str]] = {}  # kind -> sha256 of the corpus's good media files (copies count once)
    for rel, m in truth["media"].items():
        distinct.setdefault(m["kind"], set()).add(hashlib.sha256(_media_bytes(demo_corpus, rel)).hexdigest())
    (_, media), = sections["Media"].tables
    assert {r[0]: r[1] for r in media} == {kind: len(hashes) for kind, hashes in distinct.items()}
    assert "DPO preference pairs" not in sections  # no pair set built: the section is left out


def test_flow_records_are_the_stats_tables_by_column_name(demo_catalog):
    sections = _stats(demo_catalog)
    with Catalog(demo_catalog, read_only=True) as cat:
        records = catalog_stats(cat)
    assert [r["title"].split(" (")[0] for r in records] == list(sections)
    for record in records:
        (columns, rows), = sections[record["title"].split(" (")[0]].tables
        assert record["rows"] == [dict(zip(columns, row)) for row in rows]


def test_a_section_over_an_absent_or_empty_table_only_says_so(catalog):
    calls = []

    @section("Probe", "no_such_table", "probes")
    def probe(cat, sec, scope):
        calls.append(cat)

    built = probe(catalog)
    assert (built.title, built.note, built.has_data, calls) == ("Probe", "no probes in the catalog", False, [])
    assert not any(s.has_data for s in build_sections(catalog, CATALOG_STATS + RUN_REPORT))


def test_cli_catalog_stats(demo_catalog, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipelines.cli import app

    (tmp_path / "settings.yaml").write_text(f"catalog_path: {demo_catalog}\nwork_dir: {tmp_path}\n")
    monkeypatch.setenv("MAVORS_CONFIG", str(tmp_path / "settings.yaml"))
    result = CliRunner().invoke(app, ["catalog", "stats"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in ("Sources", "Media", "Duplicate media", "Quarantine", "decompression_bomb", "wds_images"):
        assert text in result.output
    assert "DPO" not in result.output
