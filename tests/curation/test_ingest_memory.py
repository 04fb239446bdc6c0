"""Ingest and dedup of 10^5 synthetic samples stream: a child process runs both library steps under a DuckDB
memory limit, and its peak RSS above its own baseline stays below what one Python object per sample would take.
The results are checked against the generator (counts, refused duplicates), against Python (content hashes,
conversations) and against the dedup rules worked in plain Python on a few groups.

    pytest tests/curation/test_ingest_memory.py -q
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb

from core.paths import REPO_ROOT
from curation.ingest import content_sha256
from demo.synthetic import CAPTIONS, VIDEO_QA, write_sources

N = 100_000
RSS_BOUND = 250 * 2**20
"""Peak RSS the two steps may add to the child's baseline (imports, PyAV and Pillow loaded, catalog open) with
DuckDB held to 128 MB: 2.5 kB per sample. The ingest before it streamed (every item a RawItem with its
conversation dicts, then a row dict) added 364 MB here for ingest alone; the streaming one adds ~200 MB, most
of it constant (Arrow's allocator, the staged batch, DuckDB's buffers)."""

CHILD = """
import json, sys
from pathlib import Path
from core.catalog import Catalog
from core.processes import process_memory
from core.settings import CatalogSettings
from curation.dedup import DedupPolicy, TaskRule, run_policy
from curation.ingest import ingest, probe_media
from curation.sources import load_manifests

root = Path(sys.argv[1])
manifests = load_manifests(sorted(root.glob("*.yaml")))
cat = Catalog(root / "work" / "catalog.duckdb", settings=CatalogSettings(memory_limit="128MB", threads=2))
probe_media([(str(root / "pool" / "i0000.png"), "image"), (str(root / "pool" / "v000.mp4"), "video")],
            workers=0)  # decoders loaded before the baseline
baseline = process_memory("VmRSS")
reports = ingest(manifests, cat, workers=0)
# scores as a scorer would leave them (test setup, not the step under test): one per sample, ties included
cat.con.execute("INSERT INTO ppl_scores (sample_id, scorer, template_version, text_scope, ppl, mean_nll, n_tokens, "
                "backend, model_path) SELECT sample_id, 't', 'llava2chat-v1', 'answer', 1 + hash(sample_id) % 50, "
                "0, 8, 'synthetic', '-' FROM samples")
counts = run_policy(cat, DedupPolicy(name="p", scorer="t", seed=3, tasks={
    "qa": TaskRule(rule="keep_k_lowest", k=2), "caption": TaskRule(rule="random_one_of_k_lowest", k=2)}))
peak = process_memory("VmHWM")
print(json.dumps({"baseline": baseline, "peak": peak, "counts": counts,
                  "reports": [{"source": r.source, "new": r.new, "refused": dict(r.quarantined)} for r in reports]}))
"""


def test_ingest_and_dedup_of_1e5_samples_stream_within_a_memory_bound(tmp_path):
    syn = write_sources(tmp_path, N)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, env=env,
                         cwd=REPO_ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    child = json.loads(out.stdout.strip().splitlines()[-1])
    assert child["peak"] - child["baseline"] < RSS_BOUND, child

    reports = {r["source"]: r for r in child["reports"]}
    assert reports[VIDEO_QA] == {"source": VIDEO_QA, "new": syn.rows[VIDEO_QA] - syn.duplicates,
                                 "refused": {"duplicate_item": syn.duplicates}}
    assert reports[CAPTIONS] == {"source": CAPTIONS, "new": syn.rows[CAPTIONS], "refused": {}}
    assert sum(child["counts"].values()) == N - syn.duplicates

    con = duckdb.connect(str(tmp_path / "work" / "catalog.duckdb"), read_only=True)
    # The repeat of item 998 (written as row 999) is refused under a numbered id; the first occurrence is kept.
    assert con.execute("SELECT item, reason FROM quarantine WHERE item LIKE 'v00000998%'").fetchall() == [
        ("v00000998#2", "duplicate_item")]
    # Content hashes computed in SQL equal the Python definition; conversations are the records' own.
    records = {r["id"]: r for r in json.loads((tmp_path / "video_qa.json").read_text())[:50]}
    rows = con.execute("SELECT item, conversation, media_hashes, content_sha256 FROM samples "
                       f"WHERE source = '{VIDEO_QA}' ORDER BY item LIMIT 40").fetchall()
    for item, conversation, hashes, sha in rows:
        conversation = json.loads(conversation)
        assert sha == content_sha256(conversation, hashes)
        assert conversation == records[item]["conversations"]
        media = records[item].get("image") or [records[item]["video"]]
        assert hashes == [hashlib.sha256((tmp_path / m).read_bytes()).hexdigest() for m in media]
    caption = con.execute(f"SELECT conversation FROM samples WHERE sample_id = '{CAPTIONS}/c00000007'").fetchone()[0]
    assert json.loads(caption)[0] == {"from": "human", "value": "<image>\nDescribe this image in detail."}

    # Dedup decisions of a few groups of each task, worked in plain Python from the members' scores.
    for task, n_groups in (("qa", 6), ("caption", 3)):
        groups = con.execute(
            "SELECT media_hashes FROM samples WHERE task = ? GROUP BY media_hashes HAVING count(*) > 2 "
            "ORDER BY media_hashes[1] LIMIT ?", [task, n_groups]).fetchall()
        for (hashes,) in groups:
            members = con.execute(
                "SELECT s.sample_id, p.ppl, d.kept FROM samples s JOIN ppl_scores p USING (sample_id) "
                "JOIN dedup_decisions d USING (sample_id) WHERE s.task = ? AND s.media_hashes = ?",
                [task, hashes]).fetchall()
            lowest = [sid for _, sid in sorted((ppl, sid.encode()) for sid, ppl, _ in members)[:2]]
            lowest = [sid.decode() for sid in lowest]
            if task == "qa":
                expected = set(lowest)
            else:
                expected = {min(lowest, key=lambda sid: hashlib.md5(f"3:{sid}".encode()).hexdigest())}
            assert {sid for sid, _, kept in members if kept} == expected, (task, hashes)
    con.close()
