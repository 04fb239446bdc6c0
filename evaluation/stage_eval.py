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
import sys
from pathlib import Path

import torch

from core import progress
from core.catalog import Catalog
from core.processes import run_logged
from curation.heldout import FAMILIES, export_heldout
from inference.loader import check_model_path


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: str):
    from lmms_eval.tasks import TaskManager

    # only our held-out tasks: indexing lmms-eval's hundreds of built-in tasks costs ~5 s per process
    return TaskManager(include_path=include_path, include_defaults=False)


def _docs(data_dir: Path, family: str) -> list[dict]:
    path = data_dir / f"{family}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@torch.no_grad()
def heldout_loss(model, processor, docs: list[dict]) -> tuple[float, int]:
    """Token-weighted mean NLL of the reference answers given media and question; (loss, answer tokens)."""
    total, tokens = 0.0, 0
    with progress.task("held-out loss", total=len(docs)) as bar:
        for d in docs:
            tag = "<video>" if d["kind"] == "video" else "<image>"
            conv = [{"from": "human", "value": f"{tag}\n{d['question']}"}, {"from": "gpt", "value": d["answer"]}]
            batch = processor.collate([processor.encode(conv, [d["media"]], name=d["sample_id"])])
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += model(**batch).loss.item() * n
            tokens += n
            bar.advance()
    return (total / tokens if tokens else float("nan")), tokens


def evaluate_checkpoint(checkpoint: str | Path, eval_dir: str | Path, limit: int | None = None) -> list[dict]:
    """Run the held-out tasks and the held-out loss on ``checkpoint`` in this process; return result rows
    (task, metric, value, samples). The held-out files must be exported under ``eval_dir`` already
    (:func:`curation.heldout.export_heldout`)."""
    check_model_path(Path(checkpoint))  # an empty or wrong folder: one line naming it, not transformers' OSError
    # the held-out sets are local JSONL files: never let `datasets` look for them on a hub
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lmms_eval.evaluator import simple_evaluate

    from evaluation.lmms_model import MavorsLmms

    eval_dir = Path(eval_dir)
    docs = {f: _docs(eval_dir / "data", f) for f in FAMILIES}
    tasks = [f"mavors_{f}" for f, d in docs.items() if d]
    if not tasks:
        raise RuntimeError(f"{eval_dir}: no held-out samples; run `mavors eval split` before sampling mixtures")
    lm = MavorsLmms(pretrained=str(checkpoint), mark_truncated=True)
    all_docs = [d for f in FAMILIES for d in docs[f]]
    # before lmms-eval runs: its clean-up deletes the model's nn.Module attributes when it is done
    loss, _ = heldout_loss(lm.engine.model, lm.engine.processor, all_docs)
    out = simple_evaluate(model=lm, tasks=tasks, task_manager=_task_manager(str(eval_dir / "tasks")), limit=limit)
    rows = []
    for task in tasks:
        family_docs = docs[task.removeprefix("mavors_")]
        n = len(family_docs[:limit] if limit else family_docs)
        for key, value in out["results"][task].items():
            metric, _, filt = key.partition(",")
            if filt != "none" or metric.endswith("_stderr") or "stderr" in metric or not isinstance(value, (int, float)):
                continue
            rows.append({"task": task, "metric": metric, "value": float(value), "samples": n})
    rows.append({"task": "heldout", "metric": "loss", "value": loss, "samples": len(all_docs)})
    return rows


def evaluate_in_subprocess(checkpoint: str | Path, eval_dir: str | Path, log_path: Path,
                           limit: int | None = None) -> list[dict]:
    """:func:`evaluate_checkpoint` in a fresh Python process in this working directory (output to ``log_path``).

    Float results then depend only on the checkpoint and the machine, not on what ran before in the
    caller's process: torch's thread count is process-wide, an engine may have set it, and an in-process
    vLLM CPU worker pins threads and disables ``torch.set_num_threads`` for the rest of the process. A
    flow's evaluation and its rerun after a crash then write the same rows.
    """
    out = Path(log_path).with_suffix(".rows.json")
    cmd = [sys.executable, "-m", "evaluation.stage_eval", "--checkpoint", str(Path(checkpoint).resolve()),
           "--eval-dir", str(Path(eval_dir).resolve()), "--out", str(out.resolve())]
    if limit:
        cmd += ["--limit", str(limit)]
    out.unlink(missing_ok=True)
    run_logged(cmd, Path(log_path), cwd=Path.cwd(), what="evaluation")
    return json.loads(out.read_text())


def record_evals(cat: Catalog, rows: list[dict], stage: str, checkpoint: str | Path, run_id: str) -> list[dict]:
    """Write one export's result rows to ``evals``; returns them as written.

    An export has one set of results: evaluating the same stage export again (a rerun after a crash, a
    later run) replaces its rows, so no stage is counted twice.
    """
    full = [{"run_id": run_id, "stage": stage, "checkpoint": str(checkpoint), **r} for r in rows]
    with cat.transaction() as con:
        con.execute("DELETE FROM evals WHERE stage = ? AND checkpoint = ?", [stage, cat.stored(checkpoint)])
        cat.insert("evals", full, con=con)
    return full


def evaluate_export(cat: Catalog, checkpoint: str | Path, stage: str, run_id: str, eval_dir: str | Path,
                    limit: int | None = None) -> list[dict]:
    """Export the catalog's held-out sets, evaluate ``checkpoint`` on them in this process and record the
    ``evals`` rows (``mavors eval run``; the flows evaluate in a child process: :func:`evaluate_in_subprocess`)."""
    check_model_path(Path(checkpoint))  # before any work
    export_heldout(cat, eval_dir)
    return record_evals(cat, evaluate_checkpoint(checkpoint, eval_dir, limit), stage, checkpoint, run_id)


def main(argv: list[str] | None = None) -> None:
    """``python -m evaluation.stage_eval``: the child process of :func:`evaluate_in_subprocess`."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--eval-dir", required=True)
    parser.add_argument("--out", required=True, help="JSON file the result rows are written to.")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    rows = evaluate_checkpoint(args.checkpoint, args.eval_dir, args.limit)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(rows))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
