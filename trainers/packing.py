"""Token budgets and packing: a step's samples on a rank as micro-batches of at most ``max_tokens`` LLM tokens.

    stream = BudgetStream(loader, accumulation=2, mode="packed", max_tokens=4096, collate=processor.collate)
    for batch in stream: ...       # micro-batches; batch["last_of_step"] marks the end of an optimizer step

The global batch stays defined in samples, as the paper's is: a step reads the same ``accumulation`` planned
units of ``micro_size`` samples in every mode (so the data order, resume positions and the set of samples of each
step do not depend on the mode), and only how they are cut into forward/backward micro-batches changes:

* ``tokens``: samples sorted by length (longest first), cut greedily so that rows x longest row <= ``max_tokens``
  (padded memory is bounded and rows in one micro-batch have similar lengths, so padding stays small);
* ``packed``: first-fit decreasing into rows of at most ``max_tokens`` tokens; each micro-batch is one row, the
  samples' real tokens back to back, no padding (lmms-engine's first-fit packing; LLaVA-OneVision-1.5 packs offline).
  ``position_ids`` restart at 0 at every sample and the row has no ``attention_mask``, so transformers' mask
  builder isolates the samples (block-diagonal causal mask on CPU/sdpa, variable-length flash attention on GPU);
  the IFA keeps them apart by their ``chunk_sequences``. The first label of every sample is ignored, as it is
  unpacked (no position predicts it), so each sample's loss is the one it has alone.

Lengths are the decoded samples' own (the loader and its workers decode the planned units as in ``samples`` mode,
handing them on unpadded through :class:`DeferredCollate`); they equal what the processor plans from the shard
metadata before decoding (:meth:`model.processing.MavorsProcessor.plan`, checked in the tests), which is what a
decision taken before decoding (vision balance, below) uses.

A sample longer than ``max_tokens`` goes alone into its own micro-batch, with a warning: refusing it would make
the longest videos untrainable, and one over-long row is what ``samples`` mode would run anyway.

How many micro-batches a step has now depends on the data, so ranks may differ; the train module pads every
rank to the largest count with empty micro-batches (:func:`trainers.module.stand_in`), so collectives match.

Vision balance across ranks: :func:`balance_ranks` deals a global batch's samples to ranks by visual tokens
(greedy longest-first, equal sample counts), planned from the shard records before decoding
(:func:`planned_visual_tokens`); the shard loader deals every step's block of the global order so with
``data.deal: vision`` (:mod:`trainers.data`), and the metrics report the decoded result per step as
``visual_tokens_per_rank`` and :func:`imbalance` (max / mean).
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from model.preprocessing import MediaError
from trainers.losses import IGNORE_INDEX

log = logging.getLogger(__name__)


class DeferredCollate:
    """A processor whose ``collate`` hands the encoded samples on unpadded, for the loader of a token-budget
    stream: the loader decodes as before, :class:`BudgetStream` forms the micro-batches."""

    def __init__(self, processor):
        self.processor = processor

    def encode(self, *args, **kwargs):
        return self.processor.encode(*args, **kwargs)

    def planned_media(self, *args, **kwargs):
        return self.processor.planned_media(*args, **kwargs)

    def collate(self, samples: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        return {"samples": list(samples)}


def sample_length(sample: dict[str, torch.Tensor]) -> int:
    """LLM input tokens of one encoded sample: its ids, visual placeholders included (one per visual token)."""
    return int(sample["input_ids"].shape[0])


def budget_groups(lengths: Sequence[int], max_tokens: int, packed: bool, name: str = "step") -> list[list[int]]:
    """Indices of the samples of each micro-batch, longest first (ties: lower index first).

    ``packed``: first-fit decreasing, sum of lengths <= max_tokens per group. Otherwise: consecutive runs of the
    length-sorted samples with count x first (longest) length <= max_tokens. A sample longer than the budget is
    a group of its own (logged)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    used: list[int] = []
    for i in order:
        n = lengths[i]
        if n > max_tokens:
            log.warning("%s: a sample of %d LLM tokens exceeds max_tokens %d; it gets a micro-batch of its own",
                        name, n, max_tokens)
            groups.append([i])
            used.append(max_tokens)  # full: nothing joins it
            continue
        if packed:
            fit = next((g for g, u in enumerate(used) if u + n <= max_tokens), None)
        else:  # padded: only the newest group can take it (sorted, so its first sample is its longest)
            g = len(groups) - 1
            fit = g if groups and (len(groups[g]) + 1) * lengths[groups[g][0]] <= max_tokens else None
        if fit is None:
            groups.append([i])
            used.append(n)
        else:
            groups[fit].append(i)
            used[fit] += n
    return groups


def pack_rows(batch: dict[str, Any]) -> dict[str, Any]:
    """A padded, right-aligned batch (B, T) -> one packed row (1, N), N = real tokens, in row order.

    ``position_ids`` (1, N) restart at 0 at each row's first token; the first label of each row becomes -100 (no
    position of the packed row may predict across samples); ``attention_mask`` is dropped (see the module doc).
    Visual tensors stay as they are: the model splices visual tokens row-major, the order the row keeps."""
    mask = batch["attention_mask"].bool()  # (B, T)
    lengths = mask.sum(1)  # (B,)
    labels = batch["labels"].clone()
    labels[:, 0] = IGNORE_INDEX
    positions = torch.arange(mask.shape[1]).expand_as(mask)
    out = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "labels")}
    out["input_ids"] = batch["input_ids"][mask][None]
    out["labels"] = labels[mask][None]
    out["position_ids"] = positions[mask][None]
    out["sample_lengths"] = lengths.tolist()
    return out


def segment_sums(values: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """Per-sample sums of a packed row's per-position values: (1, N) and the samples' lengths -> (S,)."""
    return torch.stack([part.sum() for part in values[0].split(list(lengths))])


class BudgetStream:
    """Regroups each step's ``accumulation`` planned units (``{"sample_id", "skipped", "samples"}``, from a loader
    given a :class:`DeferredCollate` processor) into token-budget micro-batches. Resumable: its state is the
    wrapped stream's, which stands at a step boundary whenever a step has been taken."""

    def __init__(self, stream, accumulation: int, mode: str, max_tokens: int,
                 collate: Callable[[list[dict]], dict]):
        if mode not in ("tokens", "packed"):
            raise ValueError(f"BudgetStream mode must be tokens or packed, not {mode!r}")
        self.stream, self.accumulation, self.mode, self.max_tokens = stream, accumulation, mode, max_tokens
        self.collate = collate

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)

    def step_batches(self, units: list[dict]) -> list[dict]:
        """One step's micro-batches from its planned units; the first carries the units' ``skipped``."""
        ids = [s for u in units for s in u["sample_id"]]
        samples = [s for u in units for s in u.get("samples", [])]
        skipped = [s for u in units for s in u.get("skipped", [])]
        groups = budget_groups([sample_length(s) for s in samples], self.max_tokens, self.mode == "packed",
                               name=f"step of {ids[:2]}...")
        batches = []
        for group in groups:
            batch = self.collate([samples[i] for i in group])
            if self.mode == "packed":
                batch = pack_rows(batch)
            batches.append({"sample_id": [ids[i] for i in group], "skipped": [], **batch})
        if not batches:  # every sample of the step was refused
            batches = [{"sample_id": []}]
        batches[0]["skipped"] = skipped
        for b in batches:
            b["last_of_step"] = False
        batches[-1]["last_of_step"] = True
        return batches

    def __iter__(self) -> Iterator[dict]:
        units = iter(self.stream)
        while True:
            step = list(itertools.islice(units, self.accumulation))
            if len(step) < self.accumulation:  # a finite stream ended: no partial step (as in samples mode)
                return
            yield from self.step_batches(step)


# -- vision balance across ranks -------------------------------------------------------------------------
def balance_ranks(costs: Sequence[int], world_size: int) -> list[list[int]]:
    """Deal samples (their visual tokens, ``costs``) to ``world_size`` ranks, greedy longest-first (LPT) with equal
    counts: each sample, largest first, goes to the least-loaded rank that still has room (ties: lowest rank).
    Rank r gets ``len // W`` samples, plus one for the first ``len % W`` ranks, as many as a strided deal gives
    it, so every rank keeps its micro-batch count. Returns each rank's sample indices in ascending order."""
    n = len(costs)
    room = [n // world_size + (r < n % world_size) for r in range(world_size)]
    loads = [0] * world_size
    ranks: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(n), key=lambda i: (-costs[i], i)):
        r = min((k for k in range(world_size) if room[k]), key=lambda k: (loads[k], k))
        ranks[r].append(i)
        loads[r] += costs[i]
        room[r] -= 1
    return [sorted(r) for r in ranks]


def planned_visual_tokens(records: Sequence[dict], processor) -> list[int]:
    """Visual tokens of shard records (their JSON's ``media`` metadata, in placeholder order) by the processor's
    plan (:meth:`model.processing.MavorsProcessor.planned_media`), before decoding and without tokenizing: the
    costs :func:`balance_ranks` deals by. A medium the processor will refuse (smaller than one patch) costs 0:
    decoding leaves its sample out."""
    def cost(record: dict) -> int:
        name = str(record.get("sample_id") or record.get("pair_id"))
        total = 0
        for k, meta in enumerate(record.get("media", [])):
            try:
                total += processor.planned_media(meta.get("kind"), meta, f"{name}: media #{k + 1}")["n_tokens"]
            except MediaError:
                return 0
        return total

    return [cost(r) for r in records]


def imbalance(loads: Sequence[float]) -> float | None:
    """max / mean of the ranks' loads (1.0: balanced); None when there is no load at all."""
    total = sum(loads)
    return max(loads) * len(loads) / total if total else None
