"""Two gloo processes started by the real ``deepspeed`` launcher with a hostfile (--no_ssh), tiny Mavors.

Train 2k steps straight vs k steps, SIGKILL (both ranks, right after step k+1:
``MAVORS_FAULT_AT=trainer-mp@<k+1>``, core.faults), relaunch: the relaunched run resumes from the
step-k checkpoint and the loss sequence is identical.
"""
from __future__ import annotations

import pytest
import yaml

from core.faults import FAULT_ENV
from core.processes import free_port, run_logged
from trainers.launch import Launch, deepspeed_command, world_size
from trainers.metrics import read_metrics


def test_two_process_kill_and_resume(tiny_work, tmp_path):
    k = 2
    spec = {
        "name": "mp", "init": {"pretrained": "{work_dir}/models/mavors"},
        "data": {"synthetic": {"n_samples": 16, "seq_len": 12, "answer_len": 4}},
        "modules": {"ive": {"trainable": True, "lr_scale": 0.1}, "ifa": {"trainable": True, "lr_scale": 0.1},
                    "projector": {"trainable": True}, "llm": {"trainable": True}},
        "optim": {"lr": 1e-3}, "schedule": {"kind": "cosine", "min_ratio": 0.1},
        "batch": {"global_size": 4, "micro_size": 2}, "budget": {"steps": 2 * k}, "checkpoint_every": k,
    }
    spec_path = tmp_path / "mp.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")

    def launch(run: str, fault: str | None = None) -> None:
        plan = Launch(hostfile=hostfile, master_port=free_port())
        assert world_size(plan) == 2
        cmd = deepspeed_command(spec_path, tmp_path / run, tiny_work, plan)
        run_logged(cmd, tmp_path / f"{run}.log", env={FAULT_ENV: fault} if fault else None, what="launcher")

    launch("straight")
    with pytest.raises(RuntimeError, match="launcher exited"):
        launch("killed", fault=f"trainer-mp@{k + 1}")  # the launcher passes its environment to the ranks
    assert "SIGKILL during step trainer-mp (after training step 3)" in (tmp_path / "killed.log").read_text()
    assert (tmp_path / "killed" / "mp" / "checkpoints" / "latest").read_text().strip() == f"step_{k:09d}"
    assert not (tmp_path / "killed" / "mp" / "export").exists()
    launch("killed")
    straight = read_metrics(tmp_path / "straight" / "mp" / "metrics.jsonl")
    resumed = read_metrics(tmp_path / "killed" / "mp" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 2 * k + 1))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    assert all(r["samples"] == 4 for r in resumed)  # both ranks' samples counted
    record = yaml.safe_load((tmp_path / "killed" / "mp" / "export" / "stage.json").read_text())
    assert record["world_size"] == 2 and record["resumed_from_step"] == k
    assert record["fingerprints"] == yaml.safe_load(
        (tmp_path / "straight" / "mp" / "export" / "stage.json").read_text())["fingerprints"]
