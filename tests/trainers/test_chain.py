"""The four demo stages chained on the tiny Mavors over WebDataset shards (SFT + DPO pairs), in process.

Each stage must start from exactly its predecessor's exported weights (compared tensor by
tensor with the export's safetensors), Stage 1 from the SigLIP/Qwen2 components; frozen
modules leave a stage bit-identical; a rerun skips every finished stage; the catalog records them.
"""
from __future__ import annotations

import functools
import io
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from conftest import STAGES_DIR
from core.config import ConfigError
from curation.preference.records import prompt_turns
from curation.shards.format import sample_record
from curation.shards.writer import write_records
from trainers.chain import check_data, mixture_data, plan_chain, run_chain
from trainers.initialization import load_start
from trainers.spec import load_stage
from trainers.stage import run_stage

NAMES = ["demo-stage1", "demo-stage1_5", "demo-stage2", "demo-dpo"]
WORDS = "red green blue circle square moves left right".split()


def _png(i: int) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _shards(root):
    sft = [sample_record(f"demo/{i}", {
        "sample_id": f"demo/{i}",
        "conversation": [{"from": "human", "value": "<image>\nDescribe the picture."},
                         {"from": "gpt", "value": f"A {WORDS[i % 8]} {WORDS[(i + 3) % 8]} shape."}]},
        [(_png(i), "png", {"kind": "image"})]) for i in range(8)]
    write_records(sft, root / "sft", prefix="sft", max_samples=4, max_bytes=1 << 22)
    pairs = [sample_record(f"pairs/{i}", {
        "pair_id": f"pairs/{i}", "sample_id": f"demo/{i}", "conversation": prompt_turns("Describe it.", ["image"]),
        "chosen": f"A {WORDS[i % 8]} circle moves left.", "rejected": "Blue."},
        [(_png(100 + i), "png", {"kind": "image"})]) for i in range(4)]
    write_records(pairs, root / "pairs", prefix="pairs", max_samples=4, max_bytes=1 << 22)
    return {**{n: {"shards": str(root / "sft")} for n in NAMES[:3]}, "demo-dpo": {"shards": str(root / "pairs")}}


def test_demo_chain_end_to_end(tiny_work, tmp_path, catalog):
    from model import MavorsForConditionalGeneration, MavorsProcessor
    from trainers.records import record_stage

    overrides = _shards(tmp_path)
    start_weights: dict[str, dict[str, torch.Tensor]] = {}

    def capturing_loader(spec, run_dir, work_dir, source):
        model, processor = load_start(spec, run_dir, work_dir, source)
        start_weights[spec.name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return model, processor

    run_dir = tmp_path / "run"
    chain = functools.partial(run_chain, NAMES, STAGES_DIR, run_dir, tiny_work, data_overrides=overrides,
                              run_one=functools.partial(run_stage, loader=capturing_loader))
    records = chain(on_stage=lambda status, record: record_stage(catalog, str(run_dir), record))
    assert [r["status"] for r in records] == ["trained"] * 4

    # Stage 1 starts from the components: the LLM is the tiny Qwen2 exactly
    qwen = load_file(tiny_work / "models" / "qwen2" / "model.safetensors")
    assert torch.equal(start_weights["demo-stage1"]["llm.model.embed_tokens.weight"], qwen["model.embed_tokens.weight"])
    exports = {name: load_file(run_dir / name / "export" / "model.safetensors") for name in NAMES}
    for prev, cur in zip(NAMES, NAMES[1:]):
        assert exports[prev].keys() <= start_weights[cur].keys()
        for key, tensor in exports[prev].items():
            assert torch.equal(start_weights[cur][key], tensor), f"{cur} did not start from {prev}'s {key}"
    # what each stage froze is bit-identical in its export; what it trained moved
    trainable = {"demo-stage1": {"ifa", "projector"}, "demo-stage1_5": {"ive", "ifa", "projector"},
                 "demo-stage2": {"ive", "ifa", "projector", "llm"}, "demo-dpo": {"ive", "ifa", "projector", "llm"}}
    for name in NAMES:
        for module in ("ive", "ifa", "projector", "llm"):
            keys = [k for k in exports[name] if k.startswith(module + ".")]
            same = all(torch.equal(exports[name][k], start_weights[name][k]) for k in keys)
            assert same != (module in trainable[name]), f"{name}: {module}"

    # DPO scored its reference once, beside the pairs
    assert len(list((tmp_path / "pairs").glob("reference_logps.*.jsonl"))) == 1
    metrics = [json.loads(x) for x in (run_dir / "demo-dpo" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and {"reward_margin", "reward_accuracy"} <= metrics[0].keys()

    # the export is a loadable Hugging Face checkpoint with its processor
    model = MavorsForConditionalGeneration.from_pretrained(run_dir / "demo-dpo" / "export")
    processor = MavorsProcessor.from_pretrained(run_dir / "demo-dpo" / "export")
    batch = processor.encode_batch([[{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]])
    assert torch.isfinite(model(**batch).loss)

    # rerun: every stage is skipped, nothing loads or trains
    start_weights.clear()
    assert [r["status"] for r in chain()] == ["skipped"] * 4 and not start_weights
    rows = catalog.query("SELECT stage, steps, world_size FROM train_stages ORDER BY started_at")
    budgets = {n: yaml.safe_load((STAGES_DIR / f"{n}.yaml").read_text())["budget"]["steps"] for n in NAMES}
    assert [(r["stage"], r["steps"], r["world_size"]) for r in rows] == [(n, budgets[n], 1) for n in NAMES]


def test_mixture_stages_resolve_to_the_folders_they_were_built_into(tmp_path):
    """What a spec's data.mixture + mixture_stage mean: the driver hands the ranks the folder that mixture stage was
    built into (the curate flow's result or the catalog's shards table); unbuilt or unresolved fails before training."""
    built = {"demo-stage1": {"1": str(tmp_path / "s1")}, "demo-stage2": {"2": str(tmp_path / "s2")}}
    names = ["demo-stage1", "demo-stage2", "demo-dpo"]  # demo-dpo: synthetic data, nothing to resolve
    elsewhere = tmp_path / "work-elsewhere"
    assert mixture_data(names, STAGES_DIR, built, elsewhere) == {"demo-stage1": {"shards": str(tmp_path / "s1")},
                                                                 "demo-stage2": {"shards": str(tmp_path / "s2")}}
    # inside the work dir: {work_dir}/... (the resolved spec and its digest survive moving the work dir)
    assert mixture_data(names, STAGES_DIR, built, tmp_path) == {"demo-stage1": {"shards": "{work_dir}/s1"},
                                                                "demo-stage2": {"shards": "{work_dir}/s2"}}
    given = {"demo-stage1": {"shards": "/given"}, "demo-stage2": {"shards": "/given2"}}  # --data wins, nothing looked up
    assert mixture_data(names, STAGES_DIR, {}, tmp_path, given) == given
    with pytest.raises(ConfigError, match="demo-stage1_5.yaml.*'data.mixture'.*stage '1.5'"):
        mixture_data(["demo-stage1_5"], STAGES_DIR, built, tmp_path)
    spec = load_stage(STAGES_DIR / "demo-stage1.yaml")
    with pytest.raises(ConfigError, match="'data.mixture': not resolved"):
        check_data(spec, tmp_path, "demo-stage1.yaml")
    with pytest.raises(ConfigError, match="'data.shards': no shards"):
        check_data(spec.with_data({"shards": str(tmp_path / "s1")}), tmp_path, "demo-stage1.yaml")



def test_a_moved_work_dir_plans_its_finished_stages_as_the_same_specs(tmp_path):
    """The spec an export is checked against names its data as {work_dir}/... and its base models as
    {work_dir}/models/..., so after the work folder moves the rerun's plan finds the same digest (no
    'exported from a different spec') and would skip the stage."""
    from trainers.launch import Launch

    work = tmp_path / "work"
    for model in ("siglip", "qwen2"):
        (work / "models" / model).mkdir(parents=True)
        (work / "models" / model / "config.json").write_text("{}")
    (work / "shards" / "s1").mkdir(parents=True)
    (work / "shards" / "s1" / "index.json").write_text("{}")

    def plan(root):
        data = mixture_data(["demo-stage1"], STAGES_DIR, {"demo-stage1": {"1": str(root / "shards" / "s1")}}, root)
        return plan_chain(["demo-stage1"], STAGES_DIR, root / "train" / "r", root, Launch(), data)

    [first] = plan(work)
    assert first.spec.data.shards == "{work_dir}/shards/s1"
    export = work / "train" / "r" / "demo-stage1" / "export"
    export.mkdir(parents=True)
    (export / "stage.json").write_text(json.dumps({"stage": "demo-stage1", "spec_digest": first.spec.digest()}))
    moved = tmp_path / "shared" / "work"
    moved.parent.mkdir()
    work.rename(moved)
    [again] = plan(moved)  # raises ConfigError 'exported from a different spec' if the digest changed
    assert again.spec.digest() == first.spec.digest()
    assert again.spec.path(again.spec.data.shards, moved) == moved / "shards" / "s1"
