"""Launch plumbing checked with DeepSpeed's own parsers; shipped configs equal the builder's output."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from conftest import STAGES_DIR
from trainers.deepspeed_config import build_ds_config
from trainers.launch import Launch, deepspeed_command, world_size
from trainers.spec import load_stage

INFRA = STAGES_DIR.parents[1] / "infra" / "deepspeed"


def test_hostfile_template_and_command(tmp_path):
    from deepspeed.launcher.runner import fetch_hostfile, parse_args

    pool = fetch_hostfile(str(INFRA / "hostfile.example"))
    assert dict(pool) == {"worker-0": 8, "worker-1": 8}
    launch = Launch(hostfile=INFRA / "hostfile.example", master_addr="10.0.0.1", master_port=29511, node_rank=1)
    assert world_size(launch) == 16
    cmd = deepspeed_command(STAGES_DIR / "stage2.yaml", tmp_path / "run", tmp_path, launch)
    assert Path(cmd[0]).name == "deepspeed"
    args = parse_args(cmd[1:])
    assert args.hostfile == str((INFRA / "hostfile.example").resolve()) and args.no_ssh and args.node_rank == 1
    assert args.master_addr == "10.0.0.1" and args.master_port == 29511 and args.module
    assert args.user_script == "trainers.stage"
    assert args.user_args[:2] == ["--spec", str((STAGES_DIR / "stage2.yaml").resolve())]


def test_ssh_launch_leaves_the_fan_out_to_deepspeed(tmp_path):
    from deepspeed.launcher.runner import parse_args

    launch = Launch(hostfile=INFRA / "hostfile.example", master_addr="worker-0", ssh=True)
    args = parse_args(deepspeed_command(STAGES_DIR / "stage2.yaml", tmp_path / "run", tmp_path, launch)[1:])
    assert not args.no_ssh and args.node_rank == -1  # DeepSpeed's default: it starts every node itself
    assert args.master_addr == "worker-0" and args.master_port == 29500


def test_without_hostfile_procs_per_node_ranks_start_here(tmp_path):
    from deepspeed.launcher.runner import parse_args

    assert Launch().in_process and world_size(Launch()) == 1
    launch = Launch(procs_per_node=3)
    assert not launch.in_process and world_size(launch) == 3
    cmd = deepspeed_command(STAGES_DIR / "stage2.yaml", tmp_path / "run", tmp_path, launch)
    args = parse_args(cmd[1:])
    assert args.num_gpus == 3 and "--hostfile" not in cmd and not args.no_ssh
    assert args.master_addr == "127.0.0.1" and args.master_port == 29500


def test_launch_settings_are_documented_and_validated():
    """One declaration: every field carries the help ``mavors train`` shows; bad values fail on load."""
    assert all(info.description for info in Launch.model_fields.values())
    for bad in ({"procs_per_node": 0}, {"node_rank": -1}, {"master_port": 70000}, {"no_ssh": True}):
        with pytest.raises(ValidationError):
            Launch(**bad)
    with pytest.raises(ValidationError):
        Launch().node_rank = 2  # frozen: a launch shared by the chain's stages cannot drift


def test_shipped_ds_configs_match_builder():
    for stage in ("stage1", "stage1_5", "stage2", "dpo"):
        spec = load_stage(STAGES_DIR / f"{stage}.yaml")
        shipped = json.loads((INFRA / f"{stage}.ds_config.json").read_text())
        assert shipped == build_ds_config(spec, 416, "cuda")
        assert "optimizer" not in shipped and shipped["zero_optimization"]["stage"] == 2
        assert shipped["train_batch_size"] == shipped["train_micro_batch_size_per_gpu"] * \
            shipped["gradient_accumulation_steps"] * 416
