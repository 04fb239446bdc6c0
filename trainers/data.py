"""The training data loader: WebDataset shards -> processor -> padded micro-batches, resumable mid-epoch.

    from model.processing import MavorsProcessor
    loader = build_loader("mavors-work/shards/demo-stage2/s2", MavorsProcessor.from_pretrained(ckpt),
                          micro_size=2, rank=rank, world_size=world, seed=0, num_workers=2)
    for batch in loader:            # {"sample_id": [...], "skipped": [...], "input_ids" (B, T), "labels", visual...}
        ...
        save({"data": loader.state_dict()})          # {"epoch": e, "consumed": n}
    loader.load_state_dict(state["data"])            # continues with exactly the next sample

Order of an epoch (a pure function of seed, epoch, rank, world size and workers):

1. the shards listed by the ``index.json`` files under the root are shuffled with
   ``Random(md5(seed:epoch))``;
2. split by node, then by DataLoader worker: each shard goes, in that order, to the
   rank (then worker) holding the fewest samples so far, so shares stay balanced;
3. each worker reads its shards with the one shard reader (:func:`curation.shards.read.iter_samples`,
   samples shaped as stock ``webdataset`` yields them) in a ``webdataset`` pipeline,
   shuffles samples with a buffer (``webdataset.shuffle``) seeded by
   ``md5(seed:epoch:rank:worker)``, decodes them through the processor and collates
   micro-batches (the last one of a worker may be short) -- one transfer per batch;
4. the main process merges the workers' batches round-robin (a worker that runs out
   drops out), re-ordering whatever the DataLoader delivers, so the merged order does
   not depend on process timing.

Every rank yields the same number of micro-batches per epoch (the smallest rank's) so
DeepSpeed ranks take the same number of steps; a rank with more drops its last batches
for that epoch (:meth:`ShardLoader.epoch_plan` says how many samples). Resuming from
``{epoch, consumed}`` recomputes how many batches each worker had delivered and skips
their samples *before* decoding (raw tar bytes only), so the stream continues with
exactly the batch an uninterrupted run would have produced next.

A sample the processor refuses (:class:`model.preprocessing.MediaError`) is left out of its micro-batch
and listed in the batch's ``skipped`` (and in :attr:`ShardLoader.skipped`) with its id and reason; it keeps
its place in the plan, so step counts and resume positions do not depend on what decoding finds.

The processor is anything with ``encode(conversation, media, name=...) -> dict`` (tensors
of one sample: ``input_ids``, ``attention_mask``, ``labels`` with -100 outside the
answers, visual tensors) and ``collate(samples) -> dict`` (padding, answer-only labels
kept): :class:`model.processing.MavorsProcessor` is one. DPO pair shards (the same record format
with ``chosen``/``rejected`` answers after the conversation) give ``{"chosen": batch, "rejected": batch}``.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from curation.shards.format import PREFERENCE_SIDES, answered, media_bytes
from curation.shards.read import ShardEntry, iter_samples, list_shards
from model.preprocessing import MediaError


class SampleProcessor(Protocol):
    """Turns one conversation and its media bytes into model tensors, and pads a list of them into a batch."""

    def encode(self, conversation: list[dict], media: list[bytes], *, name: str) -> dict[str, torch.Tensor]:
        """LLaVA-style turns (``<image>``/``<video>`` placeholders, media in their order) -> one sample:
        ``input_ids`` (T,), ``attention_mask`` (T,), ``labels`` (T,) = ids on answer tokens, -100 elsewhere."""

    def collate(self, samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Pad to (B, T_max) (labels padded with -100) and batch the visual tensors."""


def _seed(*parts: object) -> int:
    """A 60-bit seed from its parts (md5: stable across processes and Python versions, unlike hash())."""
    return int(hashlib.md5(":".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def split_balanced(shards: Sequence[ShardEntry], n: int) -> list[list[ShardEntry]]:
    """Deal shards in order, each to the part with the fewest samples so far (ties: lowest index)."""
    parts: list[list[ShardEntry]] = [[] for _ in range(n)]
    totals = [0] * n
    for s in shards:
        i = min(range(n), key=lambda k: (totals[k], k))
        parts[i].append(s)
        totals[i] += s.n_samples
    return parts


def batch_sizes(count: int, micro_size: int) -> list[int]:
    """Micro-batch sizes of one worker's stream: full batches, then the remainder."""
    return [micro_size] * (count // micro_size) + ([count % micro_size] if count % micro_size else [])


def merged_order(n_batches: Sequence[int]) -> Iterator[int]:
    """Worker of each merged batch: round-robin over workers, skipping those that ran out."""
    left = list(n_batches)
    while any(left):
        for w, n in enumerate(left):
            if n:
                left[w] -= 1
                yield w


@dataclass(frozen=True)
class EpochPlan:
    """One rank's epoch: its shards per worker, and its micro-batches (as many on every rank)."""

    epoch: int
    worker_shards: list[list[ShardEntry]]
    micro_size: int
    steps: int  # micro-batches this epoch, equal on every rank
    dropped: int  # samples of this rank's shards in batches beyond ``steps`` (not seen this epoch)

    @property
    def counts(self) -> list[int]:
        return [sum(s.n_samples for s in shards) for shards in self.worker_shards]

    def batches(self) -> list[tuple[int, int]]:
        """(worker, size) of each micro-batch of the epoch, in merged order."""
        sizes = [batch_sizes(c, self.micro_size) for c in self.counts]
        taken = [0] * len(sizes)
        out = []
        for w in itertools.islice(merged_order([len(b) for b in sizes]), self.steps):
            out.append((w, sizes[w][taken[w]]))
            taken[w] += 1
        return out

    def resume_point(self, consumed: int) -> tuple[int, list[int]]:
        """(batches done, samples each worker had delivered) after ``consumed`` samples of the epoch."""
        skips, done = [0] * len(self.worker_shards), 0
        for position, (w, size) in enumerate(self.batches()):
            if done == consumed:
                return position, skips
            done += size
            skips[w] += size
        if done == consumed:
            return self.steps, skips
        raise ValueError(f"{consumed} samples is not a micro-batch boundary of epoch {self.epoch}")


def plan_epoch(shards: Sequence[ShardEntry], *, seed: int, epoch: int, rank: int, world_size: int,
               num_workers: int, micro_size: int) -> EpochPlan:
    """This rank's share of an epoch: shards shuffled by (seed, epoch), dealt to ranks then workers by sample
    count; ``steps`` is the smallest rank's micro-batch count, so every rank steps the same number of times."""
    order = list(shards)
    random.Random(_seed(seed, epoch)).shuffle(order)
    workers = [split_balanced(part, max(1, num_workers)) for part in split_balanced(order, world_size)]

    def n_batches(parts: list[list[ShardEntry]]) -> int:
        return sum(len(batch_sizes(sum(s.n_samples for s in p), micro_size)) for p in parts)

    steps = min(n_batches(parts) for parts in workers)
    mine = EpochPlan(epoch, workers[rank], micro_size, steps, 0)
    seen = sum(size for _, size in mine.batches())
    return EpochPlan(epoch, workers[rank], micro_size, steps, sum(mine.counts) - seen)


# -- decoding one read sample ---------------------------------------------------------------------------
def decode_sample(raw: dict[str, Any], processor: SampleProcessor, dpo: bool) -> dict[str, Any]:
    """A read sample (``json`` + media members, :mod:`curation.shards.read`) -> processor tensors (+ ``sample_id``).

    Mixture and pair records share one format (:mod:`curation.shards.format`): the conversation is
    LLaVA turns, the media are the JSON's ``media`` in placeholder order; a pair's id is ``pair_id``."""
    record = json.loads(raw["json"])
    media = media_bytes(record, raw)
    if dpo:
        sid = record["pair_id"]
        return {"sample_id": sid, **{side: processor.encode(answered(record, side), media, name=f"{sid} ({side})")
                                     for side in PREFERENCE_SIDES}}
    sid = record["sample_id"]
    return {"sample_id": sid, "features": processor.encode(record["conversation"], media, name=sid)}


def sample_name(raw: dict[str, Any]) -> str:
    """The id of a read sample for error reports (its record's ``sample_id``/``pair_id``, else its tar key)."""
    try:
        record = json.loads(raw["json"])
        return str(record.get("sample_id") or record.get("pair_id"))
    except (KeyError, ValueError, AttributeError):
        return str(raw.get("__key__"))


def decode_batch(raws: list[dict[str, Any]], processor: SampleProcessor, dpo: bool) -> dict[str, Any]:
    """One planned micro-batch of read samples -> the collated batch of those the processor accepts.

    A sample whose media the processor refuses (:class:`model.preprocessing.MediaError`: smaller than one
    patch, an undecodable frame) is left out and listed in ``skipped`` as ``{"sample_id", "reason"}``; it still
    occupies its place in the epoch plan, so every rank keeps its step count and resume positions. A batch
    whose every sample was refused has ``sample_id == []`` and no tensors (the trainer steps it as empty)."""
    kept, skipped = [], []
    for raw in raws:
        try:
            kept.append(decode_sample(raw, processor, dpo))
        except MediaError as e:
            skipped.append({"sample_id": sample_name(raw), "reason": e.reason})
    batch = collate(kept, processor, dpo) if kept else {"sample_id": []}
    return {**batch, "skipped": skipped}


def collate(samples: list[dict[str, Any]], processor: SampleProcessor, dpo: bool) -> dict[str, Any]:
    """Micro-batch: the processor pads; ``sample_id`` lists the samples (chosen/rejected batched apart)."""
    ids = [s["sample_id"] for s in samples]
    if dpo:
        return {"sample_id": ids, **{side: processor.collate([s[side] for s in samples])
                                     for side in PREFERENCE_SIDES}}
    return {"sample_id": ids, **processor.collate([s["features"] for s in samples])}


# -- one epoch of one rank, as a DataLoader dataset ------------------------------------------------------
class _EpochStream(IterableDataset):
    """Each DataLoader worker reads its own shards (a webdataset pipeline) and yields (worker, micro-batch)."""

    def __init__(self, plan: EpochPlan, skips: list[int], *, seed: int, rank: int, shuffle_buffer: int,
                 processor: SampleProcessor, dpo: bool):
        self.plan, self.skips, self.seed, self.rank = plan, skips, seed, rank
        self.shuffle_buffer, self.processor, self.dpo = shuffle_buffer, processor, dpo

    def worker_pipeline(self, worker: int):
        import webdataset as wds

        urls = [s.url for s in self.plan.worker_shards[worker]]
        stages: list[Any] = [lambda: iter_samples(urls)]
        if self.shuffle_buffer > 1:
            stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer,
                                      seed=_seed(self.seed, self.plan.epoch, self.rank, worker)))
        skip = self.skips[worker]
        stages.append(lambda samples: itertools.islice(samples, skip, None))  # resume: skip before decoding
        stages.append(wds.batched(self.plan.micro_size, partial=True,  # batches of the plan, decoded together
                                  collation_fn=lambda raws: decode_batch(raws, self.processor, self.dpo)))
        return wds.DataPipeline(*stages)

    def __iter__(self):
        info = get_worker_info()
        workers = range(info.id, info.id + 1) if info is not None else range(len(self.plan.worker_shards))
        for w in workers:
            if self.plan.worker_shards[w]:
                for batch in self.worker_pipeline(w):
                    yield w, batch


def _as_is(item):
    return item


class ShardLoader:
    """Infinite, resumable stream of micro-batches for one rank (epochs follow each other)."""

    def __init__(self, root: str | Path, processor: SampleProcessor, *, micro_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle_buffer: int = 1000, num_workers: int = 0,
                 dpo: bool = False, max_epochs: int | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.shards = list_shards(root)
        self.root, self.processor, self.micro_size = Path(root), processor, micro_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle_buffer, self.num_workers, self.dpo, self.max_epochs = shuffle_buffer, num_workers, dpo, max_epochs
        self.epoch, self.consumed = 0, 0
        self.skipped: list[dict[str, Any]] = []  # refused samples handed out so far: {"epoch", "sample_id", "reason"}

    # -- resumable state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """Samples of the current epoch handed out so far on this rank (every yielded batch counts)."""
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        self.epoch_plan(epoch).resume_point(consumed)  # raises unless it is a batch boundary of that epoch
        self.epoch, self.consumed = epoch, consumed

    def epoch_plan(self, epoch: int) -> EpochPlan:
        return plan_epoch(self.shards, seed=self.seed, epoch=epoch, rank=self.rank, world_size=self.world_size,
                          num_workers=self.num_workers, micro_size=self.micro_size)

    def steps_per_epoch(self, epoch: int = 0) -> int:
        """Micro-batches per epoch, the same on every rank."""
        return self.epoch_plan(epoch).steps

    # -- iteration ---------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        while self.max_epochs is None or self.epoch < self.max_epochs:
            plan = self.epoch_plan(self.epoch)
            if plan.steps == 0:
                raise RuntimeError(f"{self.root}: rank {self.rank}/{self.world_size} gets no samples "
                                   f"({len(self.shards)} shards); use fewer ranks or smaller shards")
            yield from self._epoch(plan)
            self.epoch, self.consumed = self.epoch + 1, 0

    def _epoch(self, plan: EpochPlan) -> Iterator[dict[str, Any]]:
        start, skips = plan.resume_point(self.consumed)
        dataset = _EpochStream(plan, skips, seed=self.seed, rank=self.rank, shuffle_buffer=self.shuffle_buffer,
                               processor=self.processor, dpo=self.dpo)
        arrived = iter(DataLoader(dataset, batch_size=None, num_workers=self.num_workers, collate_fn=_as_is))
        pending: dict[int, deque] = {w: deque() for w in range(len(plan.worker_shards))}
        try:
            for worker, size in plan.batches()[start:]:
                while not pending[worker]:
                    try:
                        w, batch = next(arrived)
                    except StopIteration:
                        raise RuntimeError(f"{self.root}: worker {worker}'s shards hold fewer samples than their "
                                           "index.json says (run `mavors shards verify`)") from None
                    pending[w].append(batch)
                batch = pending[worker].popleft()
                got = len(batch["sample_id"]) + len(batch["skipped"])
                if got != size:
                    raise RuntimeError(f"{self.root}: batch of {got} samples where the index "
                                       f"implies {size} (run `mavors shards verify`)")
                self.skipped += [{"epoch": plan.epoch, **s} for s in batch["skipped"]]
                self.consumed += size
                yield batch
        finally:
            del arrived  # shuts the epoch's workers down (also when the consumer stops early)


def build_loader(root: str | Path, processor: SampleProcessor, *, micro_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle_buffer: int = 1000, dpo: bool = False,
                 num_workers: int = 0, max_epochs: int | None = None) -> ShardLoader:
    """The rank's micro-batch stream over the shards under ``root`` (see :class:`ShardLoader`)."""
    return ShardLoader(root, processor, micro_size=micro_size, rank=rank, world_size=world_size, seed=seed,
                       shuffle_buffer=shuffle_buffer, num_workers=num_workers, dpo=dpo, max_epochs=max_epochs)


def iter_pairs_once(root: str | Path, processor: SampleProcessor, *, micro_size: int, rank: int = 0,
                    world_size: int = 1) -> Iterator[dict[str, Any]]:
    """Every DPO pair once, in shard order (rank's share: pairs rank, rank+world, ...), in micro-batches;
    for scoring the reference model before training. A pair the processor refuses is left out, as training
    leaves it out (:func:`decode_batch`), so it needs no reference log-probs."""
    mine = itertools.islice(iter_samples(s.url for s in list_shards(root)), rank, None, world_size)
    while raws := list(itertools.islice(mine, micro_size)):
        batch = decode_batch(raws, processor, dpo=True)
        if batch["sample_id"]:
            yield batch
