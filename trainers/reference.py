"""Reference log-probs for DPO: computed once with the stage's starting model, stored beside the pairs.

    path = ensure_reference_logps(model, pairs, directory, batch_size=4)
    stream = WithReference(stream, load_reference_logps(path))

DPO compares the policy to a frozen reference (the model DPO starts from). Scoring
every pair with it once before training, instead of keeping a second model in
memory and running it every step, halves the forward passes and frees the memory
of a 7B copy. The file is named by the reference weights' fingerprint, so a new
Stage-2 checkpoint gets its own file and a rerun reuses the existing one. During
training only the stored numbers are read.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.distributed as dist

from trainers.export import fingerprint
from trainers.losses import sequence_logprobs
from trainers.module import model_inputs


def reference_path(directory: str | Path, model: torch.nn.Module) -> Path:
    """``<directory>/reference_logps.<weights sha256[:16]>.jsonl``."""
    return Path(directory) / f"reference_logps.{fingerprint(model.state_dict())[:16]}.jsonl"


@torch.no_grad()
def score_pairs(model: torch.nn.Module, batches: Iterable[dict]) -> Iterator[dict]:
    """Summed answer log-probs of chosen and rejected for each pair: rows ``{sample_id, chosen, rejected}``."""
    model.eval()
    device = next(model.parameters()).device
    for batch in batches:
        logps = {}
        for side in ("chosen", "rejected"):
            logits = model(**model_inputs(batch[side], device)).logits
            logps[side] = sequence_logprobs(logits, batch[side]["labels"].to(device)).tolist()  # (B,)
        for i, sid in enumerate(batch["sample_id"]):
            yield {"sample_id": sid, "chosen": logps["chosen"][i], "rejected": logps["rejected"][i]}


def ensure_reference_logps(model: torch.nn.Module, pair_batches: Callable[[int, int], Iterable[dict]],
                           directory: str | Path) -> Path:
    """Score every pair once (ranks split the pairs) unless the file for these weights exists; returns its path.

    ``pair_batches(rank, world)`` yields this rank's share of all pairs, each pair once.
    Rank 0 writes the file atomically; the others wait at a barrier.
    """
    path = reference_path(directory, model)
    distributed = dist.is_initialized() and dist.get_world_size() > 1
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if not path.exists():
        rows = list(score_pairs(model, pair_batches(rank, world)))
        if distributed:
            gathered: list = [None] * world
            dist.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
        if rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in sorted(rows, key=lambda r: r["sample_id"])))
            tmp.rename(path)
    if distributed:
        dist.barrier()
    return path


def load_reference_logps(path: str | Path) -> dict[str, tuple[float, float]]:
    """``{sample_id: (chosen logp, rejected logp)}`` from a reference file."""
    table = {}
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        table[row["sample_id"]] = (row["chosen"], row["rejected"])
    return table


class WithReference:
    """Wraps a pair stream; attaches ``ref_chosen_logps`` / ``ref_rejected_logps`` (B,) from the stored table."""

    def __init__(self, stream, table: dict[str, tuple[float, float]], source: str | Path = "reference table"):
        self.stream, self.table, self.source = stream, table, source

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)

    def __iter__(self) -> Iterator[dict]:
        for batch in self.stream:
            missing = [s for s in batch["sample_id"] if s not in self.table]
            if missing:
                raise KeyError(f"{self.source}: no reference log-probs for {missing[:3]}; "
                               "the pairs changed after scoring — delete the file to rescore")
            refs = torch.tensor([self.table[s] for s in batch["sample_id"]], dtype=torch.float32)
            refs = refs.view(-1, 2)  # (B, 2); B is 0 when the processor refused the whole micro-batch
            yield {**batch, "ref_chosen_logps": refs[:, 0], "ref_rejected_logps": refs[:, 1]}
