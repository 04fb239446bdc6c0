"""Mavors as an lmms-eval model: Python API and CLI on local held-out tasks, evals rows, log-likelihood vs a plain forward."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from core.catalog import Catalog
from curation.heldout import export_heldout, reserve_heldout
from tests.conftest import copy_catalog


@pytest.fixture(scope="module")
def heldout(demo_catalog, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    path = root / "catalog.duckdb"
    copy_catalog(demo_catalog, path)
    with Catalog(path) as cat:
        reserve_heldout(cat, per_family=2, seed=0)
        task_dir = export_heldout(cat, root / "eval")
    return path, root / "eval", task_dir


def test_python_api_runs_every_held_out_task_and_records_evals(heldout, tiny_models):
    from evaluation.stage_eval import evaluate_export

    path, eval_dir, _ = heldout
    with Catalog(path) as cat:
        rows = evaluate_export(cat, tiny_models["mavors"], "stage1", "run-1", eval_dir)
        stored = cat.query("SELECT task, metric, value, samples FROM evals WHERE run_id = 'run-1' AND stage = 'stage1'")
    got = {(r["task"], r["metric"]) for r in stored}
    for fam in ("image_qa", "video_qa"):
        assert {(f"mavors_{fam}", m) for m in ("accuracy", "exact_match", "answer_words", "brevity_rate",
                                               "termination_rate")} <= got
    for fam in ("image_caption", "video_caption"):
        assert {(f"mavors_{fam}", m) for m in ("rouge_l", "caption_words", "termination_rate")} <= got
    assert ("heldout", "loss") in got
    assert len(stored) == len(rows)
    for r in stored:
        assert r["samples"] > 0
        if r["metric"] in ("accuracy", "exact_match", "brevity_rate", "termination_rate", "rouge_l"):
            assert 0.0 <= r["value"] <= 1.0
    # a random tiny model's held-out loss is near log(vocab): ln(1024) = 6.93
    loss = next(r["value"] for r in stored if r["metric"] == "loss")
    assert 5.5 < loss < 8.5

    # the flows' path: the same evaluation in a child process; its rows replace the export's rows (one result
    # set per export, also across runs), and agree with the in-process ones
    from evaluation.stage_eval import evaluate_in_subprocess, record_evals

    child = evaluate_in_subprocess(tiny_models["mavors"], eval_dir, eval_dir / "logs" / "stage1.log")
    with Catalog(path) as cat:
        record_evals(cat, child, "stage1", tiny_models["mavors"], "run-2")
        again = cat.query("SELECT run_id, task, metric, value, samples FROM evals WHERE stage = 'stage1'")
    assert {r["run_id"] for r in again} == {"run-2"} and len(again) == len(stored) == len(child)
    before = {(r["task"], r["metric"]): r["value"] for r in stored}
    for r in again:
        assert r["value"] == pytest.approx(before[(r["task"], r["metric"])], rel=1e-5), r


def test_loglikelihood_equals_a_plain_qwen2_forward(tiny_models):
    """Text-only request: the fresh tiny Mavors' LLM is the tiny Qwen2 it was built from."""
    from lmms_eval.api.instance import Instance
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    from evaluation.lmms_model import MavorsLmms

    lm = MavorsLmms(pretrained=str(tiny_models["mavors"]))
    doc = {"q": "What color is the circle?", "a": "The circle is red."}
    lm.task_dict = {"t": {"test": {0: doc}}}
    req = Instance(request_type="loglikelihood", doc=doc, arguments=(doc["q"], lambda d: d["a"], lambda d: [], 0, "t",
                                                                     "test"), idx=0,
                   metadata={"task": "t", "doc_id": 0, "repeats": 1})
    (logprob, greedy), = lm.loglikelihood([req])

    tok = AutoTokenizer.from_pretrained(tiny_models["qwen2"])
    ref = Qwen2ForCausalLM.from_pretrained(tiny_models["qwen2"]).eval()
    prompt = f"<|im_start|>user\n{doc['q']}<|im_end|>\n<|im_start|>assistant\n"
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tok(doc["a"], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + c_ids + tok("<|im_end|>\n", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(ref(ids).logits[0].float(), -1)
    expected = sum(logp[len(p_ids) + i - 1, t].item() for i, t in enumerate(c_ids))
    assert logprob == pytest.approx(expected, abs=1e-4)
    assert greedy == all(logp[len(p_ids) + i - 1].argmax().item() == t for i, t in enumerate(c_ids))


def test_cli_finds_the_model_by_name_and_writes_results(heldout, tiny_models, tmp_path):
    _, _, task_dir = heldout
    out = tmp_path / "results"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "mavors",
           "--model_args", f"pretrained={tiny_models['mavors']},mark_truncated=true",
           "--tasks", "mavors_image_qa", "--include_path", str(task_dir), "--output_path", str(out), "--limit", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    # the CLI exits 0 even when it fails: the result file is the evidence
    files = list(out.rglob("*results*.json"))
    assert files, f"no results file\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    results = json.loads(files[0].read_text())["results"]["mavors_image_qa"]
    assert {"accuracy,none", "brevity_rate,none", "termination_rate,none"} <= set(results)


@pytest.fixture(scope="module")
def lmms_mavors(tiny_models):
    from evaluation.lmms_model import MavorsLmms

    return MavorsLmms(pretrained=str(tiny_models["mavors"]), mark_truncated=True)


def _instance(request_type: str, doc: dict, arguments: tuple):
    from lmms_eval.api.instance import Instance

    return Instance(request_type=request_type, doc=doc, arguments=arguments, idx=0,
                    metadata={"task": "t", "doc_id": 0, "repeats": 1})


@pytest.mark.parametrize("kind", ["image", "m4v video"])
def test_generate_until_equals_the_models_own_greedy_generate(lmms_mavors, demo_corpus, tmp_path, kind):
    """Independent: the model's generate on a processor batch, cut at <|im_end|>, as the adapter did before it
    went through the engine. A ``.m4v`` file is a video (the suffix list of curation.sources)."""
    from PIL import Image

    if kind == "image":
        media = tmp_path / "pic.png"
        Image.new("RGB", (64, 48), (200, 30, 30)).save(media)
    else:
        media = tmp_path / "clip.m4v"
        shutil.copy(min((demo_corpus / "kinetics_like" / "videos").glob("*.mp4")), media)
    doc = {"q": "What is shown?"}
    lmms_mavors.task_dict = {"t": {"test": {0: doc}}}
    gen_kwargs = {"until": ["<|im_end|>"], "max_new_tokens": 6, "temperature": 0}
    [text] = lmms_mavors.generate_until([_instance(
        "generate_until", doc, (doc["q"], gen_kwargs, lambda d: [str(media)], 0, "t", "test"))])

    engine = lmms_mavors.engine
    processor, model = engine.processor, engine.model
    tag = "<image>" if kind == "image" else "<video>"
    sample = processor.encode([{"from": "human", "value": f"{tag}\n{doc['q']}"}], [str(media)],
                              add_generation_prompt=True)
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        new = model.generate(**processor.collate([sample], padding_side="left"), max_new_tokens=6, eos_token_id=eos,
                             pad_token_id=processor.tokenizer.pad_token_id, do_sample=False)[0, len(sample["input_ids"]):].tolist()
    finished = eos in new
    expected = processor.decode(new[:new.index(eos)] if finished else new)
    assert text == (expected if finished else expected + "<|truncated|>")
