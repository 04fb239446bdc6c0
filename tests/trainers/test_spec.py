"""Stage specs: the shipped paper stages say exactly what §4/§5.1 say; bad specs fail before training."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import STAGES_DIR
from core.config import ConfigError
from trainers.chain import plan_chain
from trainers.launch import Launch
from trainers.spec import load_stage

PAPER = {  # stage: (trainable modules, global batch, schedule, samples)
    "stage1": ({"ifa", "projector"}, 6656, "constant", 127_000_000),
    "stage1_5": ({"ive", "ifa", "projector"}, 3328, "constant", 52_000_000),
    "stage2": ({"ive", "ifa", "projector", "llm"}, 1664, "cosine", 19_000_000),
    "dpo": ({"ive", "ifa", "projector", "llm"}, 832, "cosine", 50_000),
}


def test_every_shipped_stage_loads():
    paths = sorted(STAGES_DIR.glob("*.yaml"))
    assert {p.stem for p in paths} >= set(PAPER) | {f"demo-{s}" for s in PAPER}
    for path in paths:
        assert load_stage(path).name == path.stem


@pytest.mark.parametrize("stage", list(PAPER))
def test_paper_stage_rules(stage):
    for prefix in ("", "demo-"):
        spec = load_stage(STAGES_DIR / f"{prefix}{stage}.yaml")
        trainable, batch, schedule, samples = PAPER[stage]
        assert set(spec.trainable_modules) == trainable
        assert spec.schedule.kind == schedule
        assert spec.schedule.min_ratio == (0.1 if schedule == "cosine" else 1.0)
        # IVE and IFA at 1/10 of the LLM/projector LR whenever they train
        for module in spec.trainable_modules:
            assert spec.lr_of(module) == pytest.approx(spec.optim.lr * (0.1 if module in ("ive", "ifa") else 1.0))
        assert spec.loss.kind == ("dpo" if stage == "dpo" else "ntp")
        if prefix == "":
            assert spec.optim.lr == 1e-5 and spec.zero_stage == 2
            assert spec.batch.global_size == batch and spec.budget.samples == samples
            assert spec.batch.accumulation(416) * spec.batch.micro_size * 416 == batch  # 416 GPUs divide it


def _write(tmp_path: Path, name: str, mutate) -> Path:
    data = yaml.safe_load((STAGES_DIR / "demo-stage1.yaml").read_text())
    mutate(data)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("mutate, field, words", [
    (lambda d: d["modules"].update(vit={"trainable": True}), "modules", "unknown module"),
    (lambda d: d["modules"]["ive"].update(lr_scale=0.1), "modules.ive", "frozen"),
    (lambda d: d["modules"].pop("llm"), "modules", "missing ['llm']"),
    (lambda d: d["schedule"].update(kind="constant", min_ratio=0.1), "schedule", "cosine"),
    (lambda d: d.update(loss={"kind": "dpo"}), "loss", "beta"),
])
def test_bad_spec_names_file_and_field(tmp_path, mutate, field, words):
    path = _write(tmp_path, "bad", mutate)
    with pytest.raises(ConfigError) as err:
        load_stage(path)
    assert str(path) in str(err.value) and f"'{field}'" in str(err.value) and words in str(err.value)


def test_missing_previous_export_fails_before_training(tmp_path):
    with pytest.raises(ConfigError) as err:
        plan_chain(["demo-stage2"], STAGES_DIR, tmp_path / "run", tmp_path, Launch())
    msg = str(err.value)
    assert "demo-stage2.yaml" in msg and "'init.from_stage'" in msg and "demo-stage1_5" in msg


def test_world_size_must_divide_batch(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=3\n")
    with pytest.raises(ConfigError) as err:
        plan_chain(["demo-stage1"], STAGES_DIR, tmp_path / "run", tmp_path, Launch(hostfile=hostfile))
    msg = str(err.value)
    assert "demo-stage1.yaml" in msg and "'batch.global_size'" in msg and "world size 3" in msg


def test_unknown_stage_name_lists_known(tmp_path):
    with pytest.raises(ConfigError, match="known stages: .*stage1"):
        plan_chain(["stage7"], STAGES_DIR, tmp_path / "run", tmp_path, Launch())


def test_missing_shards_fail_before_training(tmp_path):
    """demo-stage1 reads the demo-stage1 mixture's shards; none were built in this work dir."""
    (tmp_path / "models").mkdir()
    for name in ("siglip", "qwen2"):
        (tmp_path / "models" / name).mkdir()
        (tmp_path / "models" / name / "config.json").write_text("{}")
    with pytest.raises(ConfigError) as err:
        plan_chain(["demo-stage1"], STAGES_DIR, tmp_path / "run", tmp_path, Launch())
    msg = str(err.value)
    assert "demo-stage1.yaml" in msg and "'data.mixture'" in msg and "shards build" in msg


def test_data_override_replaces_the_data_section_and_keeps_its_seed():
    """What ``mavors train --data`` and the flows' ``data`` do to a spec (driver and ranks alike)."""
    from conftest import toy_spec

    spec = toy_spec(data={"synthetic": {"n_samples": 16, "seq_len": 10, "answer_len": 4}, "seed": 7,
                          "shuffle_window": 5})
    assert spec.with_data(None, "toy.yaml") is spec and spec.with_data({}, "toy.yaml") is spec
    moved = spec.with_data({"shards": "/pairs/shards"}, "toy.yaml")
    assert moved.data.model_dump() == {"shards": "/pairs/shards", "mixture": None, "mixture_stage": None,
                                       "synthetic": None, "blend": None, "seed": 7, "shuffle_window": 1000,
                                       "workers": 0, "slice_size": 64, "deal": "strided"}
    assert moved.model_dump(exclude={"data"}) == spec.model_dump(exclude={"data"})
    assert spec.with_data({"shards": "/p", "seed": 3}, "toy.yaml").data.seed == 3


def test_data_override_is_validated_and_names_its_source():
    from conftest import toy_spec

    expected = r"toy\.yaml: data override .*: field 'data': .*give exactly one of shards, blend, mixture, synthetic"
    with pytest.raises(ConfigError, match=expected):
        toy_spec().with_data({"shards": "/p", "mixture": "m.yaml", "mixture_stage": "2"}, "toy.yaml")
