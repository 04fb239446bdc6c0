"""The training data loader: WebDataset shards -> processor -> padded micro-batches, resumable mid-epoch.

    from model.processing import MavorsProcessor
    loader = build_loader("mavors-work/shards/demo-stage2/s2", MavorsProcessor.from_pretrained(ckpt),
                          micro_size=2, rank=rank, world_size=world, seed=0, num_workers=2)
    for batch in loader:            # {"sample_id": [...], "input_ids" (B, T), "attention_mask", "labels", visual...}
        ...
        save({"data": loader.state_dict()})          # {"epoch": e, "consumed": n}
    loader.load_state_dict(state["data"])            # continues with exactly the next sample

Order of an epoch (a pure function of seed, epoch, rank, world size and workers):

1. the shards listed by the ``index.json`` files under the root are shuffled with
   ``Random(md5(seed:epoch))``;
2. split by node, then by DataLoader worker: each shard goes, in that order, to the
   rank (then worker) holding the fewest samples so far, so shares stay balanced;
3. each worker reads its shards as a stock ``webdataset`` pipeline (``tarfile_to_samples``)
   and shuffles samples with a buffer (``webdataset.shuffle``) seeded by
   ``md5(seed:epoch:rank:worker)``, then decodes through the processor;
4. the main process merges the workers' streams round-robin (a worker that runs out
   drops out), re-ordering whatever the DataLoader delivers, so the merged order does
   not depend on process timing.

Every rank yields the same number of samples per epoch (the smallest rank's share) so
DeepSpeed ranks take the same number of steps; ranks with more drop their tail for
that epoch (:meth:`ShardLoader.epoch_plan` says how many). Resuming from ``{epoch,
consumed}`` recomputes how many samples each worker had delivered and skips them
*before* decoding (raw tar bytes only), so the stream continues with exactly the
sample an uninterrupted run would have produced next.

The processor is anything with ``encode(conversation, media, name=...) -> dict`` (tensors
of one sample: ``input_ids``, ``attention_mask``, ``labels`` with -100 outside the
answers, visual tensors) and ``collate(samples) -> dict`` (padding, answer-only labels
kept): :class:`model.processing.MavorsProcessor` is one. DPO shards (records with
``prompt``/``chosen``/``rejected`` as TRL writes them) give ``{"chosen": batch, "rejected": batch}``.
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


class SampleProcessor(Protocol):
    """Turns one conversation and its media bytes into model tensors, and pads a list of them into a batch."""

    def encode(self, conversation: list[dict], media: list[bytes], *, name: str) -> dict[str, torch.Tensor]:
        """LLaVA-style turns (``<image>``/``<video>`` placeholders, media in their order) -> one sample:
        ``input_ids`` (T,), ``attention_mask`` (T,), ``labels`` (T,) = ids on answer tokens, -100 elsewhere."""

    def collate(self, samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Pad to (B, T_max) (labels padded with -100) and batch the visual tensors."""


@dataclass(frozen=True)
class ShardEntry:
    url: str
    n_samples: int


def list_shards(root: str | Path) -> list[ShardEntry]:
    """Shards (path, sample count) listed by the ``index.json`` files under ``root``, in index order."""
    from curation.shards import index_files

    entries = []
    for index in index_files(root):
        for e in json.loads(index.read_text())["shards"]:
            entries.append(ShardEntry(str(index.parent / e["name"]), int(e["n_samples"])))
    if not entries:
        raise FileNotFoundError(f"{root}: no shards (no index.json listing any); run `mavors shards build` first")
    return entries


def _seed(*parts: object) -> int:
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


@dataclass(frozen=True)
class EpochPlan:
    """One rank's epoch: its shards per worker, and how many samples it yields (equal on every rank)."""

    epoch: int
    worker_shards: list[list[ShardEntry]]
    length: int
    dropped: int  # samples of this rank's shards beyond ``length`` (not seen this epoch)

    @property
    def counts(self) -> list[int]:
        return [sum(s.n_samples for s in shards) for shards in self.worker_shards]


def plan_epoch(shards: Sequence[ShardEntry], *, seed: int, epoch: int, rank: int, world_size: int,
               num_workers: int) -> EpochPlan:
    order = list(shards)
    random.Random(_seed(seed, epoch)).shuffle(order)
    per_rank = split_balanced(order, world_size)
    length = min(sum(s.n_samples for s in part) for part in per_rank)
    mine = per_rank[rank]
    return EpochPlan(epoch, split_balanced(mine, max(1, num_workers)), length,
                     sum(s.n_samples for s in mine) - length)


def merged_order(counts: Sequence[int]) -> Iterator[int]:
    """Worker of each merged position: round-robin over workers, skipping those that ran out."""
    left = list(counts)
    while any(left):
        for w, n in enumerate(left):
            if n:
                left[w] -= 1
                yield w


def worker_skips(counts: Sequence[int], consumed: int) -> list[int]:
    """How many samples each worker had delivered when the merged stream reached ``consumed``."""
    skips = [0] * len(counts)
    for w in itertools.islice(merged_order(counts), consumed):
        skips[w] += 1
    return skips


# -- decoding one raw webdataset sample ----------------------------------------------------------------
def _trl_conversation(prompt: list[dict], answer: list[dict]) -> list[dict]:
    """TRL messages (content parts) -> LLaVA-style turns with placeholders in part order."""
    turns = []
    for message in prompt + answer:
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        text = "\n".join(f"<{p['type']}>" if p["type"] in ("image", "video") else p["text"] for p in parts)
        turns.append({"from": "gpt" if message["role"] == "assistant" else "human", "value": text})
    return turns


def _trl_media(record: dict, raw: dict[str, bytes]) -> list[bytes]:
    """The record's media bytes in the order their placeholders appear in the prompt."""
    queues = {"image": deque(record.get("images", [])), "video": deque(record.get("videos", []))}
    media = []
    for message in record["prompt"]:
        for p in message["content"] if isinstance(message["content"], list) else []:
            if p["type"] in queues:
                media.append(raw[queues[p["type"]].popleft()])
    return media


def decode_sample(raw: dict[str, Any], processor: SampleProcessor, dpo: bool) -> dict[str, Any]:
    """A raw webdataset sample (``json`` + media members) -> processor tensors (+ ``sample_id``)."""
    record = json.loads(raw["json"])
    if dpo:
        media = _trl_media(record, raw)
        sid = record.get("meta", {}).get("pair_id", raw["__key__"])
        return {"sample_id": sid, **{side: processor.encode(_trl_conversation(record["prompt"], record[side]), media,
                                                            name=f"{sid} ({side})")
                                     for side in ("chosen", "rejected")}}
    media = [raw[m["file"]] for m in record.get("media", [])]
    sid = record["sample_id"]
    return {"sample_id": sid, "features": processor.encode(record["conversation"], media, name=sid)}


def collate(samples: list[dict[str, Any]], processor: SampleProcessor, dpo: bool) -> dict[str, Any]:
    """Micro-batch: the processor pads; ``sample_id`` lists the samples (chosen/rejected batched apart)."""
    ids = [s["sample_id"] for s in samples]
    if dpo:
        return {"sample_id": ids, **{side: processor.collate([s[side] for s in samples])
                                     for side in ("chosen", "rejected")}}
    return {"sample_id": ids, **processor.collate([s["features"] for s in samples])}


# -- one epoch of one rank, as a DataLoader dataset ------------------------------------------------------
class _EpochStream(IterableDataset):
    """Each DataLoader worker reads its own shards (a webdataset pipeline) and yields (worker, sample)."""

    def __init__(self, plan: EpochPlan, skips: list[int], *, seed: int, rank: int, shuffle_buffer: int,
                 processor: SampleProcessor, dpo: bool):
        self.plan, self.skips, self.seed, self.rank = plan, skips, seed, rank
        self.shuffle_buffer, self.processor, self.dpo = shuffle_buffer, processor, dpo

    def worker_pipeline(self, worker: int):
        import webdataset as wds

        urls = [s.url for s in self.plan.worker_shards[worker]]
        stages: list[Any] = [wds.SimpleShardList(urls), wds.tarfile_to_samples()]
        if self.shuffle_buffer > 1:
            stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer,
                                      seed=_seed(self.seed, self.plan.epoch, self.rank, worker)))
        skip = self.skips[worker]
        stages.append(lambda samples: itertools.islice(samples, skip, None))  # resume: skip before decoding
        stages.append(wds.map(lambda raw: decode_sample(raw, self.processor, self.dpo)))
        return wds.DataPipeline(*stages)

    def __iter__(self):
        info = get_worker_info()
        workers = range(info.id, info.id + 1) if info is not None else range(len(self.plan.worker_shards))
        for w in workers:
            if self.plan.worker_shards[w]:
                for sample in self.worker_pipeline(w):
                    yield w, sample


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

    # -- resumable state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """Samples of the current epoch handed out so far on this rank (every yielded batch counts)."""
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        length = self.epoch_plan(epoch).length
        if not 0 <= consumed <= length:
            raise ValueError(f"loader state {state}: epoch {epoch} has {length} samples on this rank")
        self.epoch, self.consumed = epoch, consumed

    def epoch_plan(self, epoch: int) -> EpochPlan:
        return plan_epoch(self.shards, seed=self.seed, epoch=epoch, rank=self.rank, world_size=self.world_size,
                          num_workers=self.num_workers)

    def steps_per_epoch(self, epoch: int = 0) -> int:
        """Micro-batches per epoch, the same on every rank."""
        return -(-self.epoch_plan(epoch).length // self.micro_size)

    # -- iteration ---------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        while self.max_epochs is None or self.epoch < self.max_epochs:
            plan = self.epoch_plan(self.epoch)
            if plan.length == 0:
                raise RuntimeError(f"{self.root}: rank {self.rank}/{self.world_size} gets no samples "
                                   f"({len(self.shards)} shards); use fewer ranks or smaller shards")
            if self.consumed >= plan.length:
                self.epoch, self.consumed = self.epoch + 1, 0
                continue
            yield from self._epoch(plan)

    def _epoch(self, plan: EpochPlan) -> Iterator[dict[str, Any]]:
        counts = plan.counts
        dataset = _EpochStream(plan, worker_skips(counts, self.consumed), seed=self.seed, rank=self.rank,
                               shuffle_buffer=self.shuffle_buffer, processor=self.processor, dpo=self.dpo)
        loader = DataLoader(dataset, batch_size=None, num_workers=self.num_workers, collate_fn=_as_is)
        arrived = iter(loader)
        pending: dict[int, deque] = {w: deque() for w in range(len(counts))}
        batch: list[dict[str, Any]] = []
        try:
            for position, worker in enumerate(itertools.islice(merged_order(counts), self.consumed, plan.length),
                                              start=self.consumed):
                while not pending[worker]:
                    try:
                        w, sample = next(arrived)
                    except StopIteration:
                        raise RuntimeError(f"{self.root}: worker {worker}'s shards hold fewer samples than their "
                                           "index.json says (run `mavors shards verify`)") from None
                    pending[w].append(sample)
                batch.append(pending[worker].popleft())
                if len(batch) == self.micro_size or position + 1 == plan.length:
                    out = collate(batch, self.processor, self.dpo)
                    self.consumed += len(batch)
                    batch = []
                    yield out
        finally:
            del arrived  # shuts the epoch's workers down (also when the consumer stops early)
        self.epoch, self.consumed = self.epoch + 1, 0


def build_loader(root: str | Path, processor: SampleProcessor, *, micro_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle_buffer: int = 1000, dpo: bool = False,
                 num_workers: int = 0, max_epochs: int | None = None) -> ShardLoader:
    """The rank's micro-batch stream over the shards under ``root`` (see :class:`ShardLoader`)."""
    return ShardLoader(root, processor, micro_size=micro_size, rank=rank, world_size=world_size, seed=seed,
                       shuffle_buffer=shuffle_buffer, num_workers=num_workers, dpo=dpo, max_epochs=max_epochs)


def iter_pairs_once(root: str | Path, processor: SampleProcessor, *, micro_size: int, rank: int = 0,
                    world_size: int = 1) -> Iterator[dict[str, Any]]:
    """Every DPO pair once, in shard order (rank's share: pairs rank, rank+world, ...), in micro-batches;
    for scoring the reference model before training."""
    import webdataset as wds

    urls = [s.url for s in list_shards(root)]
    raw = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())
    mine = (decode_sample(s, processor, dpo=True) for s in itertools.islice(raw, rank, None, world_size))
    while batch := list(itertools.islice(mine, micro_size)):
        yield collate(batch, processor, dpo=True)
