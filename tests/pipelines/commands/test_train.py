"""``mavors train``: launch options from ``Launch``, the printed launcher lines, and what node 0's driver records.

The stages here are already exported (a hand-written ``export/stage.json`` per stage), so the chain
skips them and nothing trains: what is checked is the command around the chain.
"""
from __future__ import annotations

import json
import shlex

import duckdb
import pytest
import typer
import yaml
from typer.testing import CliRunner

from core.config import ConfigError
from core.paths import MANIFESTS
from pipelines.cli import app
from pipelines.commands.train import data_overrides, other_node_data, stage_data
from trainers.launch import Launch
from trainers.spec import load_stage

STEPS = {"first": 7, "second": 9}


def _spec(name: str, init: dict) -> dict:
    return {"name": name, "init": init, "data": {"synthetic": {"n_samples": 4, "seq_len": 8, "answer_len": 2}},
            "modules": {m: {"trainable": True} for m in ("ive", "ifa", "projector", "llm")},
            "optim": {"lr": 1e-3}, "batch": {"global_size": 2, "micro_size": 1}, "budget": {"steps": 1}}


@pytest.fixture
def workspace(tmp_path):
    """Settings, two stage specs (second starts from first) and an export of each under run ``r``."""
    work = tmp_path / "work"
    (work / "models" / "m").mkdir(parents=True)
    (work / "models" / "m" / "config.json").write_text("{}")
    stages = tmp_path / "stages"
    stages.mkdir()
    (stages / "first.yaml").write_text(yaml.safe_dump(_spec("first", {"pretrained": "{work_dir}/models/m"})))
    (stages / "second.yaml").write_text(yaml.safe_dump(_spec("second", {"from_stage": "first"})))
    for name, steps in STEPS.items():
        spec = load_stage(stages / f"{name}.yaml")
        export = work / "train" / "r" / name / "export"
        export.mkdir(parents=True)
        (export / "stage.json").write_text(json.dumps({
            "stage": name, "spec": spec.model_dump(mode="json"), "spec_digest": spec.digest(),
            "source": str(stages / f"{name}.yaml"), "world_size": 1, "steps": steps, "samples": 2 * steps,
            "final_loss": 6.987797737121582, "resumed_from_step": 0, "started_at": 1.7e9, "ended_at": 1.7e9 + 60}))
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"work_dir": str(work)}))
    return {"settings": settings, "stages": stages, "work": work}


def _train(ws, *args: str, run: str = "r"):
    return CliRunner().invoke(app, ["--config", str(ws["settings"]), "train", "--stages-dir", str(ws["stages"]),
                                    "--run", run, *args])


def _query(ws, sql: str) -> list[tuple]:
    path = ws["work"] / "catalog.duckdb"
    if not path.exists():
        return []
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_launch_options_take_default_and_help_from_launch():
    command = typer.main.get_command(app).commands["train"]
    options = {p.name: p for p in command.params if p.param_type_name == "option"}
    for field, info in Launch.model_fields.items():  # one option per field, named after it
        assert options[field].default == info.default and options[field].help == info.description, field
    assert options["procs_per_node"].opts == ["--procs"]
    assert options["ssh"].opts == ["--ssh"] and options["ssh"].secondary_opts == ["--no-ssh"]


def test_print_command_prints_one_launcher_line_per_stage(workspace, tmp_path):
    from deepspeed.launcher.runner import parse_args

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    (pairs / "index.json").write_text("{}")
    result = _train(workspace, "--stages", "first,second", "--print-command", "--hostfile", str(hostfile),
                    "--master-addr", "10.0.0.9", "--master-port", "29601", "--node-rank", "1",
                    "--data", f"second={pairs}", run="fresh")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("/")]
    assert len(lines) == 2
    for line, name in zip(lines, ("first", "second")):
        args = parse_args(shlex.split(line)[1:])
        assert args.hostfile == str(hostfile) and args.no_ssh and args.node_rank == 1
        assert (args.master_addr, args.master_port, args.user_script) == ("10.0.0.9", 29601, "trainers.stage")
        assert args.user_args[:6] == ["--spec", str(workspace["stages"] / f"{name}.yaml"),
                                      "--run-dir", str(workspace["work"] / "train" / "fresh"),
                                      "--work-dir", str(workspace["work"])]
    assert parse_args(shlex.split(lines[1])[1:]).user_args[6:] == ["--data-json", json.dumps({"shards": str(pairs)})]
    assert "--data-json" not in lines[0]
    assert _query(workspace, "SELECT * FROM runs") == []  # printing records nothing


def test_node_0_records_one_run_and_every_stage(workspace):
    result = _train(workspace, "--stages", "first,second")
    assert result.exit_code == 0, result.output
    assert "first: skipped, 7 steps, final loss 6.988," in result.output  # rounded: 4 significant digits
    [(run_id, command, status, parameters)] = _query(workspace, "SELECT run_id, command, status, parameters FROM runs")
    assert (command, status) == ("train", "completed")
    assert json.loads(parameters) == {"stages": ["first", "second"], "run": "r", "hostfile": None}
    rows = _query(workspace, "SELECT stage, steps, export_path, run_id FROM train_stages ORDER BY stage")
    # stored relative to the catalog's folder (the work dir), so the work dir can move
    assert rows == [(name, steps, f"train/r/{name}/export", run_id) for name, steps in STEPS.items()]


def test_a_failing_chain_leaves_its_run_failed_with_the_message(workspace):
    result = _train(workspace, "--stages", "first,nosuch")
    assert result.exit_code != 0 and "nosuch" in str(result.exception)
    [(status, detail)] = _query(workspace, "SELECT status, detail FROM runs")
    assert status == "failed" and detail.startswith("ConfigError: ") and "nosuch.yaml: no such stage spec" in detail
    assert _query(workspace, "SELECT * FROM train_stages") == []


def test_other_nodes_train_without_recording(workspace, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    result = _train(workspace, "--stages", "first,second", "--hostfile", str(hostfile), "--node-rank", "1")
    assert result.exit_code == 0, result.output
    assert _query(workspace, "SELECT * FROM runs") == [] and "skipped" not in result.output
    failing = _train(workspace, "--stages", "first,nosuch", "--hostfile", str(hostfile), "--node-rank", "1")
    assert "nosuch" in str(failing.exception)  # the chain ran here, and its failure is node 0's to record
    assert _query(workspace, "SELECT * FROM runs") == []


def test_data_overrides_parse_stage_equals_folder(tmp_path, monkeypatch):
    """A relative folder is the current dir's; one inside the work dir is written ``{work_dir}/...``, so the
    spec (and the digest its export is checked against) does not change when the work dir moves."""
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "work"
    assert data_overrides(["dpo=/p/shards", "stage2=rel/dir", "s1=work/shards/a"], work) == {
        "dpo": {"shards": "/p/shards"}, "stage2": {"shards": str(tmp_path / "rel" / "dir")},
        "s1": {"shards": "{work_dir}/shards/a"}}
    for bad in ("dpo", "dpo=", "=dir"):
        with pytest.raises(typer.BadParameter, match="expected STAGE=SHARD_DIR"):
            data_overrides([bad], work)


def test_a_mixture_stage_trains_on_the_folder_the_catalog_records(tmp_path):
    """demo-stage1 names mixture demo-stage1, stage 1: the driver hands its ranks that stage's shard folder."""
    from core.catalog import Catalog

    stages, path = MANIFESTS / "stages", tmp_path / "catalog.duckdb"
    with pytest.raises(ConfigError, match="demo-stage1.yaml: field 'data.mixture': no shards built"):
        stage_data(path, ["demo-stage1"], stages, tmp_path / "work", {})  # no catalog yet: nothing was built
    folder = tmp_path / "shards" / "demo-stage1" / "s1"
    with Catalog(path) as cat:
        cat.insert("shards", [{"mixture": "demo-stage1", "stage": "1", "name": f"demo-s1-{i:06d}.tar",
                               "path": str(folder / f"demo-s1-{i:06d}.tar"), "sha256": "0" * 64, "n_samples": 4,
                               "bytes": 1024, "run_id": None} for i in range(2)])
    assert stage_data(path, ["demo-stage1"], stages, tmp_path / "work", {}) == {"demo-stage1": {"shards": str(folder)}}
    assert stage_data(path, ["demo-stage1"], stages, tmp_path, {}) == {"demo-stage1": {"shards": "{work_dir}/shards/demo-stage1/s1"}}
    given = {"demo-stage1": {"shards": "/elsewhere"}}
    assert stage_data(path, ["demo-stage1", "demo-dpo"], stages, tmp_path, given) == given  # --data wins; no mixture in dpo


def test_other_nodes_need_data_for_a_mixture_stage_and_never_open_the_catalog(tmp_path):
    """DuckDB lets one process open the catalog, so a node other than 0 is handed node 0's folder as --data."""
    stages = MANIFESTS / "stages"
    with pytest.raises(ConfigError, match=r"demo-stage1.yaml: field 'data.mixture': node 2 does not open the catalog"
                                          r".*--data demo-stage1=DIR"):
        other_node_data(["demo-stage1"], stages, {}, node_rank=2)
    given = {"demo-stage1": {"shards": "/shared/shards/demo-stage1/s1"}}
    assert other_node_data(["demo-stage1", "demo-dpo"], stages, given, node_rank=2) == given
