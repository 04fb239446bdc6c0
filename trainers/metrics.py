"""Per-step metrics as JSONL: loss, LR per module, grad norm, samples/s, tokens/s, estimated MFU.

    MetricsLogger(run_dir / "metrics.jsonl", module, peak_flops=None)   # a loop callback

Rank 0 writes; losses and throughput are reduced over ranks first (a rank's ``loss`` is its share of the
global-batch mean: they add up). Samples the processor refused are listed in the record of their step
(``skipped``: ``{"sample_id", "reason", "rank"}``; held until the next written record when ``log_every`` > 1).
On resume the file is cut back to the checkpoint's step, so the log reads like one uninterrupted run.
Vision balance: ``visual_tokens_per_rank`` (the step's visual tokens on each rank) and ``vision_imbalance``, their
max / mean (1.0 balanced; :func:`trainers.packing.imbalance`); ``micro_batches``: forward/backward passes per rank;
``padded_fraction``: padding among the LLM positions computed (0 for packed rows); ``sample_ids`` (with the
spec's ``log_sample_ids``): the step's samples, every rank's in rank order.
MFU uses the usual estimate (PaLM appendix B / torchtitan): 6·N FLOPs per token for
trainable weights, 4·N for frozen weights on the gradient path (forward + input
gradient), 2·N for frozen weights before the first trainable module, plus attention.
"""
from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from core import progress
from trainers.packing import imbalance
from trainers.param_groups import frozen_prefix, module_of


def flops_per_token(model: torch.nn.Module, spec, seq_len: int) -> float:
    """Estimated training FLOPs per LLM token for this stage's freeze pattern (embeddings excluded)."""
    no_graph = set(frozen_prefix(spec))
    total = 0.0
    for name, p in model.named_parameters():
        if "embed" in name:
            continue  # a lookup, not a matmul
        module = module_of(name)
        if spec.modules[module].trainable:
            total += 6 * p.numel()
        elif module in no_graph:
            total += 2 * p.numel()
        else:
            total += 4 * p.numel()
    cfg = getattr(getattr(model, "llm", model), "config", None)
    if cfg is not None and hasattr(cfg, "num_hidden_layers"):
        total += 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len  # attention scores + values, fwd+bwd
    return total


def all_reduce(values: list[float], mean: bool, maximum: bool = False) -> list[float]:
    """Sum (or mean, or ``maximum``) of each value over ranks; identity in a single process. (NCCL reduces GPU
    tensors only.)"""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if maximum else dist.ReduceOp.SUM)
    if maximum:
        return t.tolist()
    return (t / dist.get_world_size() if mean else t).tolist()


def gather_lists(items: list) -> list:
    """Every rank's ``items`` concatenated in rank order (all ranks call it); ``items`` in a single process."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(items)
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a metrics JSONL file."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def followed_steps(name: str, path: str | Path, total: int) -> Iterator[Callable[[], None]]:
    """A progress task (:mod:`core.progress`) for a stage trained by a child process: yields the poll that sets
    its steps from the newest complete record of the child's metrics file (a half-written last line is skipped)."""
    path = Path(path)
    with progress.task(f"train {name}", total=total) as bar:
        def poll() -> None:
            lines = path.read_text().splitlines() if path.exists() else []
            for line in reversed(lines):
                try:
                    bar.update(int(json.loads(line)["step"]))
                    return
                except (ValueError, KeyError):
                    continue
        yield poll


class MetricsLogger:
    """Loop callback: one JSON line per ``log_every`` optimizer steps (rank 0)."""

    def __init__(self, path: Path, module, peak_flops: float | None = None, seq_len: int = 0):
        self.path, self.module, self.peak_flops = Path(path), module, peak_flops
        self.flops_per_token = None
        self.seq_len = seq_len
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.last = time.perf_counter()
        self.skipped: list[dict] = []  # refused samples of the steps since the last written record

    def on_start(self, step: int) -> None:
        """Drop records past ``step`` (a crashed run's steps that resume will redo)."""
        if self.rank == 0:
            kept = [r for r in read_metrics(self.path) if r["step"] <= step]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.last = time.perf_counter()

    def on_step(self, step: int, stats: dict) -> None:
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        skipped = stats.get("skipped", [])
        loss, samples, tokens, positions, n_skipped, *extra = all_reduce(
            [stats["loss"], stats["samples"], stats["tokens"], stats.get("positions", 0), len(skipped)]
            + [stats[k] for k in ("reward_margin", "reward_accuracy") if k in stats], mean=False)
        if n_skipped:  # every rank sees the same sum, so all of them take part in the gather
            self.skipped += gather_lists([{**s, "rank": self.rank} for s in skipped])
        world = dist.get_world_size() if dist.is_initialized() else 1
        ids = gather_lists(stats.get("sample_ids", [])) if self.module.spec.log_sample_ids else None
        visual = all_reduce([float(stats.get("visual_tokens", 0)) if r == self.rank else 0.0 for r in range(world)],
                            mean=False)  # each rank's own load, in rank order
        if self.rank != 0 or step % self.module.spec.log_every:
            return
        record = {"step": step, "loss": loss, "lr": stats["lr"], "grad_norm": stats["grad_norm"],
                  "samples": int(samples), "tokens": int(tokens),
                  "samples_per_s": samples / elapsed, "tokens_per_s": tokens / elapsed, "mfu": None,
                  "micro_batches": stats.get("micro_batches"),
                  "padded_fraction": 1.0 - tokens / positions if positions else None,
                  "visual_tokens_per_rank": [int(v) for v in visual], "vision_imbalance": imbalance(visual),
                  "skipped": self.skipped}
        self.skipped = []
        if ids is not None:
            record["sample_ids"] = ids
        if "reward_margin" in stats:
            record["reward_margin"], record["reward_accuracy"] = extra
        if self.peak_flops:
            if self.flops_per_token is None:
                self.flops_per_token = flops_per_token(self.module.model, self.module.spec, self.seq_len)
            record["mfu"] = self.flops_per_token * tokens / elapsed / (self.peak_flops * world)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def on_end(self, step: int) -> None:
        pass
