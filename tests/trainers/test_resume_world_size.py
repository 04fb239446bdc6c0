"""Resume on another world size: 2 ZeRO-2 ranks (real ``deepspeed`` launcher, gloo, tiny Mavors, real shards),
SIGKILL after step 3, resume the step-2 checkpoint on 1 rank. The samples of every step are the uninterrupted
2-rank run's (nothing lost or repeated; each step's samples dealt to ranks by visual tokens, ``deal: vision``), and
the losses match it (the optimizer state moved over: DeepSpeed's elastic ZeRO checkpoint). ~2 min on 2 busy cores: slow; ``test_data.py`` checks the same order without DeepSpeed.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import yaml
from PIL import Image

from core.faults import FAULT_ENV
from core.processes import free_port, run_logged
from curation.shards.format import sample_record
from curation.shards.writer import write_records
from trainers.launch import Launch, deepspeed_command
from trainers.metrics import read_metrics

N_SAMPLES, GLOBAL, STEPS = 24, 4, 6  # one epoch in 6 steps


def _shards(root):
    """24 samples in 3 shards: every third text-only, the others one PNG (sizes vary)."""
    records = []
    for n in range(N_SAMPLES):
        sid = f"mix/{n:02d}"
        if n % 3 == 0:
            records.append(sample_record(sid, {"sample_id": sid, "conversation": [
                {"from": "human", "value": f"What is {n} plus one?"}, {"from": "gpt", "value": f"{n + 1}."}]}, []))
            continue
        buf = io.BytesIO()
        height = 32 + 8 * (n % 3)
        Image.fromarray(np.random.default_rng(n).integers(0, 255, (height, 48, 3), np.uint8)).save(buf, format="PNG")
        records.append(sample_record(sid, {"sample_id": sid, "conversation": [
            {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": f"Noise {n}."}]},
            [(buf.getvalue(), "png", {"kind": "image", "width": 48, "height": height})]))
    write_records(records, root, prefix="mix", max_samples=8, max_bytes=1 << 24)
    return root


@pytest.mark.slow
def test_two_ranks_killed_resume_on_one_rank_with_the_same_samples(tiny_work, tmp_path):
    spec = {
        "name": "ws", "init": {"pretrained": "{work_dir}/models/mavors"},
        "data": {"shards": str(_shards(tmp_path / "shards")), "shuffle_window": 8, "slice_size": 4, "workers": 1,
                 "deal": "vision"},
        "modules": {"ive": {"trainable": True, "lr_scale": 0.1}, "ifa": {"trainable": True, "lr_scale": 0.1},
                    "projector": {"trainable": True}, "llm": {"trainable": True}},
        "optim": {"lr": 1e-3}, "schedule": {"kind": "cosine", "min_ratio": 0.1},
        "batch": {"global_size": GLOBAL, "micro_size": 1}, "budget": {"steps": STEPS}, "checkpoint_every": 2,
        "log_sample_ids": True,
    }
    spec_path = tmp_path / "ws.yaml"
    spec_path.write_text(yaml.safe_dump(spec))

    def launch(run: str, ranks: int, fault: str | None = None) -> None:
        hostfile = tmp_path / f"hostfile{ranks}"
        hostfile.write_text(f"localhost slots={ranks}\n")
        cmd = deepspeed_command(spec_path, tmp_path / run, tiny_work, Launch(hostfile=hostfile,
                                                                              master_port=free_port()))
        run_logged(cmd, tmp_path / f"{run}-{ranks}.log", env={FAULT_ENV: fault} if fault else None, what="launcher")

    launch("straight", 2)
    with pytest.raises(RuntimeError, match="launcher exited"):
        launch("killed", 2, fault="trainer-ws@3")
    assert (tmp_path / "killed" / "ws" / "checkpoints" / "latest").read_text().strip() == "step_000000002"
    launch("killed", 1)
    straight = read_metrics(tmp_path / "straight" / "ws" / "metrics.jsonl")
    resumed = read_metrics(tmp_path / "killed" / "ws" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    steps = [sorted(r["sample_ids"]) for r in resumed]
    assert steps == [sorted(r["sample_ids"]) for r in straight]
    assert sorted(s for step in steps for s in step) == [f"mix/{n:02d}" for n in range(N_SAMPLES)]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in straight], rel=1e-4)
    record = yaml.safe_load((tmp_path / "killed" / "ws" / "export" / "stage.json").read_text())
    assert record["world_size"] == 1 and record["resumed_from_step"] == 2
