"""Fixtures of the trainer tests: spec builders and a tiny-model work dir. DeepSpeed runs for real (gloo, CPU)."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
from core.paths import MANIFESTS

sys.path.insert(0, str(Path(__file__).parent))  # toy.py

STAGES_DIR = MANIFESTS / "stages"


def toy_spec(**overrides):
    """A stage spec for the toy model: stage-1 module rules, synthetic tokens, 4 steps, tiny batch."""
    from trainers.spec import StageSpec

    data = {
        "name": "toy", "init": {"components": {"vision": "v", "llm": "l"}},
        "data": {"synthetic": {"n_samples": 16, "seq_len": 10, "answer_len": 4}},
        "modules": {"ive": {"trainable": False}, "ifa": {"trainable": True, "lr_scale": 0.1},
                    "projector": {"trainable": True, "lr_scale": 1.0}, "llm": {"trainable": False}},
        "optim": {"lr": 1e-2, "weight_decay": 0.01}, "schedule": {"kind": "constant"},
        "batch": {"global_size": 4, "micro_size": 2}, "budget": {"steps": 4}, "checkpoint_every": 2,
    }
    for key, value in overrides.items():
        data[key] = copy.deepcopy(value)
    return StageSpec.model_validate(data)


@pytest.fixture(scope="session")
def tiny_work(tiny_models) -> Path:
    """A work dir whose ``models/`` holds the tiny checkpoints (what the demo specs point at)."""
    work = Path(tiny_models["tokenizer"]).parent.parent / "trainers-work"
    (work / "models").mkdir(parents=True, exist_ok=True)
    for name in ("siglip", "qwen2", "mavors"):
        link = work / "models" / name
        if not link.exists():
            link.symlink_to(tiny_models[name])
    return work
