"""Evaluate one stage's export on the held-out sets and record the results in the ``evals`` table.

    mavors eval run --checkpoint mavors-work/train/demo/stage2/export --stage stage2

The generation tasks run through lmms-eval (our task YAMLs over the held-out JSONL,
Mavors as its model), so the same code runs the real benchmarks on a cluster; the
held-out loss is the training objective (mean next-token NLL over answer tokens) on the
held-out samples, computed with the model directly.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch

from curation.catalog import Catalog
from curation.evaluation.heldout import FAMILIES, export_heldout


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: str):
    from lmms_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)  # indexing every task takes seconds: once per process


def _docs(data_dir: Path, family: str) -> list[dict]:
    path = data_dir / f"{family}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@torch.no_grad()
def heldout_loss(model, processor, docs: list[dict]) -> tuple[float, int]:
    """Token-weighted mean NLL of the reference answers given media and question; (loss, answer tokens)."""
    total, tokens = 0.0, 0
    for d in docs:
        tag = "<video>" if d["kind"] == "video" else "<image>"
        conv = [{"from": "human", "value": f"{tag}\n{d['question']}"}, {"from": "gpt", "value": d["answer"]}]
        batch = processor.collate([processor.encode(conv, [d["media"]], name=d["sample_id"])])
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += model(**batch).loss.item() * n
        tokens += n
    return (total / tokens if tokens else float("nan")), tokens


def evaluate_export(cat: Catalog, checkpoint: str | Path, stage: str, run_id: str, eval_dir: str | Path,
                    limit: int | None = None) -> list[dict]:
    """Run the held-out tasks and the held-out loss on ``checkpoint``; write and return ``evals`` rows.

    An export has one set of results: evaluating the same stage export again (a rerun after a crash, a
    later run) replaces its rows, so no stage is counted twice.
    """
    # the held-out sets are local JSONL files: never let `datasets` look for them on a hub
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lmms_eval.evaluator import simple_evaluate

    from curation.evaluation.lmms_model import MavorsLmms

    eval_dir = Path(eval_dir)
    task_dir = export_heldout(cat, eval_dir)
    data_dir = eval_dir / "data"
    docs = {f: _docs(data_dir, f) for f in FAMILIES}
    tasks = [f"mavors_{f}" for f, d in docs.items() if d]
    if not tasks:
        raise RuntimeError(f"{cat.path}: no held-out samples; run `mavors eval split` before sampling mixtures")
    lm = MavorsLmms(pretrained=str(checkpoint), mark_truncated=True)
    all_docs = [d for f in FAMILIES for d in docs[f]]
    # before lmms-eval runs: its clean-up deletes the model's nn.Module attributes when it is done
    loss, _ = heldout_loss(lm.model, lm.processor, all_docs)
    out = simple_evaluate(model=lm, tasks=tasks, task_manager=_task_manager(str(task_dir)), limit=limit)
    rows = []
    for task in tasks:
        n = len(docs[task.removeprefix("mavors_")][:limit] if limit else docs[task.removeprefix("mavors_")])
        for key, value in out["results"][task].items():
            metric, _, filt = key.partition(",")
            if filt != "none" or metric.endswith("_stderr") or "stderr" in metric or not isinstance(value, (int, float)):
                continue
            rows.append({"run_id": run_id, "stage": stage, "checkpoint": str(checkpoint), "task": task,
                         "metric": metric, "value": float(value), "samples": n})
    rows.append({"run_id": run_id, "stage": stage, "checkpoint": str(checkpoint), "task": "heldout",
                 "metric": "loss", "value": loss, "samples": len(all_docs)})
    with cat.transaction() as con:
        con.execute("DELETE FROM evals WHERE stage = ? AND checkpoint = ?", [stage, str(checkpoint)])
        cat.insert("evals", rows, con=con)
    return rows
