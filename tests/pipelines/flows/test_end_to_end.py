"""The end-to-end flow on the demo corpus under Prefect's test harness, and its crash safety.

    pytest tests/pipelines/flows/test_end_to_end.py -x -q

One uninterrupted run (in this process) is the reference. Its outputs are checked with
independent readers (``tarfile``, ``safetensors``, plain SQL). A second run in a subprocess is
SIGKILLed three times (during caption synthesis, during sharding, during training) and rerun;
its catalog rows, shard checksums and final weights must equal the reference's.
"""
from __future__ import annotations

import hashlib
import json
import signal
import tarfile
from pathlib import Path

import duckdb
import pytest
import torch
from safetensors.torch import load_file

from flows_helpers import catalog_snapshot, copy_workspace, file_checksums, run_path

STAGES = ["demo-stage1", "demo-stage1_5", "demo-stage2", "demo-dpo"]


def _tar_samples(path: Path) -> dict[str, set[str]]:
    """Sample key -> member extensions, read with the standard library's tarfile."""
    out: dict[str, set[str]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, _, ext = m.name.partition(".")
            out.setdefault(key, set()).add(ext)
    return out


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the session's reference run is set up inside this test's budget
def test_end_to_end_outputs(reference):
    ws, summary, _, _ = reference
    work = ws / "mavors-work"
    con = duckdb.connect(str(work / "catalog.duckdb"), read_only=True)
    try:
        # Shards for every training stage, readable with tarfile, counts and checksums as recorded.
        # (pair-set shards of the DPO step are recorded as mixture 'dpo/<set>'; they are checked below)
        recorded = con.execute("SELECT path, sha256, n_samples, stage FROM shards "
                               "WHERE mixture NOT LIKE 'dpo/%'").fetchall()
        stages_with_shards = {r[3] for r in recorded}
        assert {"1", "1.5", "2"} <= stages_with_shards
        for path, sha, n, _ in recorded:
            tar_path = work / path  # stored relative to the catalog's folder, the work dir
            assert hashlib.sha256(tar_path.read_bytes()).hexdigest() == sha, tar_path
            samples = _tar_samples(tar_path)
            assert len(samples) == n
            assert all("json" in exts for exts in samples.values())
        members = con.execute("SELECT count(*), count(DISTINCT (mixture, stage, sample_id)) FROM mixture_members "
                              "WHERE shard IS NOT NULL").fetchone()
        assert members[0] == members[1] == sum(r[2] for r in recorded)

        # Every DPO input of the three domains was decided (a pair or a recorded reason), and the pair
        # shards hold exactly the recorded pairs (read with tarfile).
        decided = dict(con.execute("SELECT domain, count(*) FROM dpo_inputs GROUP BY domain").fetchall())
        assert set(decided) == {"qa", "image_caption", "video_caption"}, decided
        pairs = con.execute("SELECT count(*) FROM dpo_pairs").fetchone()[0]
        assert sum(len(_tar_samples(p)) for p in sorted((work / "dpo").rglob("*.tar"))) == pairs

        # One completed runs row per flow run (end_to_end, curate, train x2, dpo_regenerate), and no other:
        # the library steps inside them (ingest among them) record under their flow's run.
        runs = con.execute("SELECT command, status, code_version, parameters FROM runs").fetchall()
        assert sorted(r[0] for r in runs) == ["curate", "dpo_regenerate", "end_to_end", "train", "train"]
        assert all(r[1] == "completed" and r[2] for r in runs)
        assert all("code_digest" in json.loads(r[3]) for r in runs)
        assert summary["run_id"] in {r[0] for r in con.execute("SELECT run_id FROM runs").fetchall()}
    finally:
        con.close()

    # Four trained stages whose weights chain: a module a stage freezes is bit-identical to the
    # previous stage's export (so the stage started from it); trainable modules changed.
    assert [s["stage"] for s in summary["stages"]] == STAGES
    weights = [load_file(work / "train" / "demo" / s / "export" / "model.safetensors") for s in STAGES]
    base_llm = load_file(next((work / "models" / "qwen2").glob("*.safetensors")))

    def module(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        return {k: v for k, v in state.items() if k.startswith(prefix)}

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    stage1, stage1_5, stage2, dpo = weights
    # Stage 1 freezes the LLM: it is the base Qwen2 checkpoint's, tensor for tensor.
    llm1 = {k[len("llm."):]: v for k, v in module(stage1, "llm.").items()}
    shared = llm1.keys() & base_llm.keys()
    assert len(shared) >= len(base_llm) - 1 and all(torch.equal(llm1[k], base_llm[k]) for k in shared)
    # Stage 1.5 freezes the LLM too, so its LLM is Stage 1's; it trains IVE and IFA.
    assert same(module(stage1, "llm."), module(stage1_5, "llm."))
    assert not same(module(stage1, "ive."), module(stage1_5, "ive."))
    assert not same(module(stage1, "ifa."), module(stage1_5, "ifa."))
    for before, after in ((stage1_5, stage2), (stage2, dpo)):                # Stage 2 and DPO train the LLM
        assert not same(module(before, "llm."), module(after, "llm."))
    # The trainer's records: each stage started from exactly the weights its predecessor exported.
    records = [json.loads((work / "train" / "demo" / s / "export" / "stage.json").read_text()) for s in STAGES]
    for prev, rec in zip(records, records[1:]):
        assert rec["spec"]["init"]["from_stage"] == prev["stage"]
        assert rec["init_fingerprints"] == prev["fingerprints"]


def test_every_stage_is_evaluated_on_every_held_out_task(reference):
    ws, _, _, _ = reference
    con = duckdb.connect(str(ws / "mavors-work" / "catalog.duckdb"), read_only=True)
    try:
        held = {r[0] for r in con.execute("SELECT DISTINCT family FROM heldout").fetchall()}
        rows = con.execute("SELECT stage, task, metric, value, checkpoint FROM evals").fetchall()
    finally:
        con.close()
    assert held == {"image_qa", "image_caption", "video_qa", "video_caption"}
    tasks = {f"mavors_{f}" for f in held} | {"heldout"}
    for stage in STAGES:
        assert {r[1] for r in rows if r[0] == stage} == tasks, stage
        assert all(r[4].endswith(f"{stage}/export") for r in rows if r[0] == stage)


@pytest.mark.slow
def test_dpo_stage_trains_on_the_built_pair_set(reference):
    """The DPO stage's data is the pair set dpo_regenerate built (not the spec's synthetic pairs): its record
    names the set's shard folder, and the reference log-probs it computed before training lie beside the
    pairs, one row per pair in the shards (read with tarfile)."""
    ws = reference[0]
    con = duckdb.connect(str(ws / "mavors-work" / "catalog.duckdb"), read_only=True)
    try:
        [(set_id, shard_dir)] = con.execute("SELECT pair_set_id, shard_dir FROM dpo_pair_sets").fetchall()
        n_pairs = con.execute("SELECT count(*) FROM dpo_pairs WHERE pair_set_id = ?", [set_id]).fetchone()[0]
    finally:
        con.close()
    assert n_pairs > 0, f"pair set {set_id} has no pairs"
    record = json.loads((ws / "mavors-work" / "train" / "demo" / "demo-dpo" / "export" / "stage.json").read_text())
    assert record["spec"]["data"]["synthetic"] is None
    # The trainer got the folder as {work_dir}/... (no absolute path in the spec's digest); the catalog records it
    # relative to its own folder, the work dir.
    assert record["spec"]["data"]["shards"] == "{work_dir}/" + shard_dir, (record["spec"]["data"], shard_dir)
    shard_dir = ws / "mavors-work" / shard_dir
    keys = {key for tar in sorted(shard_dir.rglob("*.tar")) for key in _tar_samples(tar)}
    assert len(keys) == n_pairs
    [ref_file] = sorted(shard_dir.glob("reference_logps.*.jsonl"))
    rows = [json.loads(line) for line in ref_file.read_text().splitlines()]
    assert len(rows) == n_pairs and len({r["sample_id"] for r in rows}) == n_pairs
    assert all(r["chosen"] < 0 and r["rejected"] < 0 for r in rows)  # summed log-probs of real answers


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_a_moved_work_dir_reports_and_reruns_from_another_directory(reference, tmp_path, monkeypatch):
    """The work folder copied elsewhere (as to shared storage) and used through a settings file from an unrelated
    working directory: the report has every figure the flow's own report had and no missing input, and the
    end-to-end flow reruns there with every stage skipped (no 'exported from a different spec')."""
    import os
    import shutil
    import subprocess
    import sys

    from pipelines.flows.end_to_end import EndToEndParams, end_to_end

    ws, summary, _, _ = reference
    moved = tmp_path / "shared" / "work"
    shutil.copytree(ws / "mavors-work", moved, symlinks=True)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "settings.yaml").write_text("work_dir: ../shared/work\n")  # relative to the file
    (tmp_path / "cwd").mkdir()
    run_id = summary["run_id"]
    out = tmp_path / "report.html"
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "--config", "../conf/settings.yaml", "report", run_id,
                           "--out", str(out)], cwd=tmp_path / "cwd", capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr[-3000:]
    html = out.read_text()
    flows_own = (ws / "mavors-work" / "reports" / f"{run_id}.html").read_text()
    assert "no metrics at" not in html
    assert html.count("<img") == flows_own.count("<img") >= 2 * len(STAGES)  # loss + LR per stage at least

    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("MAVORS_CONFIG", str(tmp_path / "conf" / "settings.yaml"))
    again = end_to_end(EndToEndParams(use_ray=False, report=False))
    assert [s["stage"] for s in again["stages"]] == STAGES
    assert all(s["status"] == "skipped" for s in again["stages"]), [(s["stage"], s["status"]) for s in again["stages"]]
    assert again["dpo"]["pair_set_id"] == summary["dpo"]["pair_set_id"]


@pytest.mark.slow
def test_dpo_pairs_in_three_domains(reference):
    con = duckdb.connect(str(reference[0] / "mavors-work" / "catalog.duckdb"), read_only=True)
    try:
        domains = dict(con.execute("SELECT domain, count(*) FROM dpo_pairs GROUP BY domain").fetchall())
        inputs = con.execute("SELECT domain, reason, count(*) FROM dpo_inputs GROUP BY ALL ORDER BY ALL").fetchall()
    finally:
        con.close()
    assert set(domains) == {"qa", "image_caption", "video_caption"}, (domains, inputs)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_crash_and_rerun_match_the_uninterrupted_run(reference, demo_workspace, tmp_path_factory, run_flow):
    """SIGKILL during caption synthesis, during sharding, during training; rerun; same rows, shards, weights."""
    _, _, ref_rows, ref_files = reference
    ws = copy_workspace(demo_workspace, run_path(tmp_path_factory))  # where the reference ran
    # Caption synthesis after its 2nd catalog commit, sharding after its 2nd, Stage 1.5 20 s into training
    # (its trainer subprocess dies with the flow: same process group).
    for fault in ("captions#2", "shards#2", "train-demo-stage1_5:20"):
        killed = run_flow(ws, "end-to-end", env={"MAVORS_FAULT_AT": fault}, args=("--no-ray",))
        assert killed.returncode == -signal.SIGKILL, (fault, killed.stdout[-3000:], killed.stderr[-3000:])
        step_name = fault.split(":")[0].split("#")[0]
        assert f"fault injection: SIGKILL during step {step_name}" in killed.stderr + killed.stdout
    # The last rerun ignores Prefect's cache: the library's own skipping must carry the resume.
    done = run_flow(ws, "end-to-end", args=("--no-ray", "--no-cache"))
    assert done.returncode == 0, done.stderr[-5000:]

    work = ws / "mavors-work"
    rows = catalog_snapshot(work / "catalog.duckdb", ws)
    assert rows.keys() == ref_rows.keys()
    for table in ref_rows:
        extra = [r for r in rows[table] if r not in ref_rows[table]]
        missing = [r for r in ref_rows[table] if r not in rows[table]]
        assert rows[table] == ref_rows[table], (
            f"table {table} differs after crashes and reruns: {len(rows[table])} rows vs {len(ref_rows[table])}; "
            f"only after rerun {extra[:3]}; only in the reference {missing[:3]}")
    assert file_checksums(work) == ref_files
