"""The training data loader: WebDataset shard sets -> processor -> micro-batches, one global sample order.

    from model.processing import MavorsProcessor
    sources = [Source.from_root("s2", "mavors-work/shards/demo-stage2/s2", weight=0.9),
               Source.from_root("s15", "mavors-work/shards/demo-stage2/s1_5", weight=0.1)]
    loader = build_loader(sources, MavorsProcessor.from_pretrained(ckpt), micro_size=2, rank=rank,
                          world_size=world, seed=0, num_workers=2)
    for batch in loader:            # {"sample_id": [...], "skipped": [...], "input_ids" (B, T), "labels", visual...}
        ...
        save({"data": loader.state_dict()})      # small JSON: global position, per-source epoch/cursor, credits
    loader.load_state_dict(state["data"])        # continues with exactly the next sample, on any world size

The global order is a function of (seed, shard sets, weights) only, not of world size or workers:

1. per source and per epoch of it, the source's samples are cut into slices of ``slice_size`` consecutive
   samples of a shard, the slices shuffled with ``Random(md5(seed:source:epoch))``, and the samples inside
   each window of ``shuffle_window`` consecutive positions shuffled again (seeded by the window's number):
   every sample once per epoch, neighbours of a shard spread over the window;
2. the sources are blended by smooth weighted round-robin (nginx's: every position each source gains its
   weight in credit, the richest one gives the sample and pays the total): over any run of positions each
   source's share is within one sample of its weight's, deterministically; a source that runs out starts
   its next epoch, so a small replay source repeats while a large one is still in its first pass;
3. rank ``r`` of ``W`` takes positions ``r, r+W, r+2W, ...``; its m-th micro-batch is the next ``micro_size``
   of them. A step of ``accumulation`` micro-batches on every rank is the contiguous block of ``global_size``
   positions, whatever ``W``, so a run resumed on another world size trains the same samples per step;
4. or, with ``deal="vision"``, each step's block of ``global_size`` positions is dealt to ranks by visual
   tokens instead (:func:`trainers.packing.balance_ranks`: longest first to the least-loaded rank, equal sample
   counts), the tokens planned from the records' media metadata before decoding
   (:func:`trainers.packing.planned_visual_tokens`; every rank reads the block's JSON members and computes the
   same deal); a rank's share, in position order, makes its ``accumulation`` micro-batches. The step's samples
   are the same set as strided, only their ranks change, so resuming on another world size still trains every
   step's samples.

Reading: the main process walks the order and hands each micro-batch's sample addresses (source, shard,
sample number) to a DataLoader worker (workers take the rank's micro-batches round-robin, the DataLoader
returns them in order); the worker reads just those samples by offset (:class:`curation.shards.read.ShardReader`),
decodes them through the processor and collates. No rank reads another rank's samples, resuming reads nothing
it skips, the workers start once per run (not per epoch), and the order cannot depend on worker timing.

State (:meth:`ShardLoader.state_dict`): the global position after the last micro-batch handed out, each
source's epoch and cursor and digest, and the round-robin credits, the same on every rank at a step
boundary (a vision deal's state inside a step is the step's start plus ``step_micro``: the rank's micro-batches
of the step already handed out, and the world size the deal was made for). Resuming with a changed blend (a weight
changed, a source added or dropped) migrates: kept
sources continue at their cursors, new ones start at their first sample, credits restart; a source
whose shard list changed under the same name is refused (its cursor would point into another order).

A sample the processor refuses (:class:`model.preprocessing.MediaError`) is left out of its micro-batch
and listed in the batch's ``skipped`` (and in :attr:`ShardLoader.skipped`) with its id and reason; it keeps
its place in the order, so step counts and resume positions do not depend on what decoding finds.

The processor is anything with ``encode(conversation, media, name=...) -> dict`` (tensors
of one sample: ``input_ids``, ``attention_mask``, ``labels`` with -100 outside the
answers, visual tensors) and ``collate(samples) -> dict`` (padding, answer-only labels
kept): :class:`model.processing.MavorsProcessor` is one. DPO pair shards (the same record format
with ``chosen``/``rejected`` answers after the conversation) give ``{"chosen": batch, "rejected": batch}``.

Why not Megatron-Energon (7.4.1, evaluated 2026-12-03 outside the project's environment: ``energon prepare
--sample-type CrudeWebdataset`` indexes our shards as they are, a 20-line task encoder cooks our records), point
by point, as measured on 32 samples in 7 shards, batch 2, one worker:

* savable state: Energon's is a per-rank list of per-worker states (restore keys, shard offsets, shuffle buffer
  contents); ours is one global position plus, per source, epoch, cursor, credit and digest (< 400 bytes JSON,
  the same on every rank);
* world-size change: Energon gives each rank its own slice of the shards, so the 2-rank order is not the 1-rank
  order (rank 0 began ``src/000, src/007``, the 1-rank run ``src/015, src/017``), and rank 0's state restored on
  one rank continues rank 0's stream only (rank 1's position is lost: its samples come again or never);
  ``restore_state_global`` asserts a list of world-size entries. Ours: the same order on every world size, and
  ``tests/trainers/test_resume_world_size.py`` resumes a 2-rank ZeRO-2 run on 1 rank with every step's samples;
* workers: restoring with 2 workers a state saved with 1 fails (``AssertionError``: ``len(worker_states) ==
  num_workers``); our order and state do not depend on workers;
* blends: Energon's metadatasets weight datasets (random draws); ours are deterministic (smooth weighted
  round-robin, share within one sample of the weight over every prefix) and resume exactly;
* restorable packing: Energon packs in its task encoder with restore keys; ours packs a step's samples in
  :mod:`trainers.packing`, after the loader, so packing needs no loader state at all;
* state migration when a blend changes: ours continues kept sources at their cursors (tested); not measured for
  Energon.

Adopting it would lose the world-size and worker-count resume the trainer needs, so the loader stays ours.
"""
from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import logging
import multiprocessing
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset

from curation.shards.format import PREFERENCE_SIDES, answered, media_bytes
from curation.shards.read import ShardEntry, ShardReader, iter_samples, list_shards
from model.preprocessing import MediaError
from trainers.packing import balance_ranks, planned_visual_tokens

log = logging.getLogger(__name__)


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


# -- the global order ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One shard set of a blend: its name (the key of its state), shards in index order, and weight."""

    name: str
    shards: tuple[ShardEntry, ...]
    weight: float = 1.0

    @classmethod
    def from_root(cls, name: str, root: str | Path, weight: float = 1.0) -> "Source":
        if not weight > 0:
            raise ValueError(f"source {name}: weight {weight} must be > 0")
        return cls(name, tuple(list_shards(root)), float(weight))

    @property
    def n_samples(self) -> int:
        return sum(s.n_samples for s in self.shards)

    def digest(self) -> str:
        """What the source's order is made of: its shards' names and sample counts, in index order."""
        listing = [(Path(s.url).name, s.n_samples) for s in self.shards]
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


class SourceEpoch:
    """One epoch's order of one source: position -> (shard number, sample number in that shard)."""

    def __init__(self, source: Source, *, seed: int, epoch: int, slice_size: int, window: int):
        first_slice = [0]  # slice ids of shard k: first_slice[k] .. first_slice[k+1]-1
        for s in source.shards:
            first_slice.append(first_slice[-1] + -(-s.n_samples // slice_size))
        self.source, self.seed, self.epoch, self.slice_size, self.window = source, seed, epoch, slice_size, window
        self.first_slice = first_slice
        self.slices = list(range(first_slice[-1]))
        random.Random(_seed(seed, source.name, epoch)).shuffle(self.slices)
        self.starts = [0]  # position of each shuffled slice's first sample
        for sid in self.slices:
            self.starts.append(self.starts[-1] + self._slice_len(sid))
        self._perm: tuple[int, list[int]] = (-1, [])

    def __len__(self) -> int:
        return self.starts[-1]

    def _slice_of(self, sid: int) -> tuple[int, int]:
        """(shard, first sample) of slice ``sid``."""
        shard = bisect.bisect_right(self.first_slice, sid) - 1
        return shard, (sid - self.first_slice[shard]) * self.slice_size

    def _slice_len(self, sid: int) -> int:
        shard, start = self._slice_of(sid)
        return min(self.slice_size, self.source.shards[shard].n_samples - start)

    def __getitem__(self, position: int) -> tuple[int, int]:
        k, j = divmod(position, self.window)
        if self._perm[0] != k:
            base = k * self.window
            perm = list(range(min(self.window, len(self) - base)))
            random.Random(_seed(self.seed, self.source.name, self.epoch, "window", k)).shuffle(perm)
            self._perm = (k, perm)
        q = k * self.window + self._perm[1][j]
        i = bisect.bisect_right(self.starts, q) - 1
        shard, start = self._slice_of(self.slices[i])
        return shard, start + q - self.starts[i]


@dataclass(frozen=True)
class SampleRef:
    """Where the sample at one global position lives."""

    source: int
    shard: int
    index: int


class GlobalOrder:
    """The blended global order, walked one position at a time; :meth:`state_dict` is where it stands."""

    def __init__(self, sources: Sequence[Source], *, seed: int, slice_size: int, window: int):
        self.sources, self.seed, self.slice_size, self.window = list(sources), seed, slice_size, window
        self.position = 0
        self.credit = [0.0] * len(self.sources)
        self.epochs = [0] * len(self.sources)
        self.cursors = [0] * len(self.sources)
        self._orders: dict[int, SourceEpoch] = {}
        self._total = sum(s.weight for s in self.sources)

    def order(self, i: int) -> SourceEpoch:
        o = self._orders.get(i)
        if o is None or o.epoch != self.epochs[i]:
            o = self._orders[i] = SourceEpoch(self.sources[i], seed=self.seed, epoch=self.epochs[i],
                                              slice_size=self.slice_size, window=self.window)
        return o

    def next(self) -> SampleRef:
        for i, s in enumerate(self.sources):
            self.credit[i] += s.weight
        i = max(range(len(self.sources)), key=lambda k: (self.credit[k], -k))
        self.credit[i] -= self._total
        shard, index = self.order(i)[self.cursors[i]]
        self.cursors[i] += 1
        if self.cursors[i] == self.sources[i].n_samples:
            self.epochs[i], self.cursors[i] = self.epochs[i] + 1, 0
        self.position += 1
        return SampleRef(i, shard, index)

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position,
                "sources": {s.name: {"epoch": self.epochs[i], "cursor": self.cursors[i], "weight": s.weight,
                                     "credit": self.credit[i], "digest": s.digest()}
                            for i, s in enumerate(self.sources)}}

    def load_state_dict(self, state: dict[str, Any], source: str = "loader state") -> None:
        """Continue from ``state``; a changed blend migrates (module docstring), a changed shard list fails."""
        if "position" not in state or "sources" not in state:
            raise ValueError(f"{source}: not a loader state of this version (keys {sorted(state)}); "
                             "it cannot continue this order")
        saved = state["sources"]
        same = [s.name for s in self.sources] == list(saved) and all(
            saved[s.name]["weight"] == s.weight for s in self.sources)
        for i, s in enumerate(self.sources):
            entry = saved.get(s.name)
            if entry is None:
                self.epochs[i], self.cursors[i] = 0, 0
                continue
            if entry["digest"] != s.digest():
                raise ValueError(f"{source}: source {s.name!r} now lists other shards than when saved "
                                 f"(digest {entry['digest']} -> {s.digest()}); give the changed set a new name")
            self.epochs[i], self.cursors[i] = int(entry["epoch"]), int(entry["cursor"])
        self.credit = [float(saved[s.name]["credit"]) if same else 0.0 for s in self.sources]
        self.position = int(state["position"])
        if not same:
            log.warning("%s: the blend changed (%s -> %s); kept sources continue at their cursors, new ones start, "
                        "credits restart", source, {k: v["weight"] for k, v in saved.items()},
                        {s.name: s.weight for s in self.sources})


# -- reading and decoding one micro-batch ----------------------------------------------------------------
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
    occupies its place in the global order, so every rank keeps its step count and resume positions. A batch
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


class _MicroBatches(Dataset):
    """A DataLoader dataset whose "index" is one micro-batch's sample addresses: reads and decodes them."""

    def __init__(self, sources: Sequence[Source], processor: SampleProcessor, dpo: bool):
        self.urls = [[s.url for s in src.shards] for src in sources]
        self.processor, self.dpo = processor, dpo
        self.reader = ShardReader()  # each worker builds its own offset tables, for the shards it touches

    def __getitem__(self, item: tuple[list[SampleRef], dict]) -> tuple[dict[str, Any], dict]:
        refs, state = item
        raws = [self.reader.read(self.urls[r.source][r.shard], r.index) for r in refs]
        return decode_batch(raws, self.processor, self.dpo), state


def _as_is(item):
    return item


def _worker_context(num_workers: int):
    """Workers start from a fork server, a fresh interpreter that imported this module once, not by forking
    the caller: a process that already runs threads (DeepSpeed, gloo, an in-process Prefect flow or Ray
    driver) can leave a forked child in a state that dies on exit (seen as "DataLoader worker exited
    unexpectedly with exit code 1" after a served Prefect deployment in the same process)."""
    if num_workers == 0:
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


DEALS = ("strided", "vision")


class ShardLoader:
    """Infinite (or ``max_epochs``-long), resumable stream of micro-batches for one rank. ``deal`` (module
    docstring, 3 and 4): ``vision`` needs ``global_size`` (samples per step) and a processor with
    ``planned_media`` (:class:`model.processing.MavorsProcessor`)."""

    def __init__(self, sources: Sequence[Source], processor: SampleProcessor, *, micro_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle_window: int = 1000, slice_size: int = 64,
                 num_workers: int = 0, dpo: bool = False, max_epochs: int | None = None, deal: str = "strided",
                 global_size: int | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        names = [s.name for s in sources]
        if not sources or len(set(names)) != len(names):
            raise ValueError(f"a blend needs one or more sources with distinct names (got {names})")
        if deal not in DEALS:
            raise ValueError(f"deal must be one of {DEALS}, not {deal!r}")
        if deal == "vision":
            if global_size is None or global_size % (micro_size * world_size):
                raise ValueError(f"deal vision needs global_size, a multiple of micro_size {micro_size} x world size "
                                 f"{world_size} (got {global_size})")
            if not hasattr(processor, "planned_media"):
                raise ValueError(f"deal vision plans visual tokens with the processor's planned_media, which "
                                 f"{type(processor).__name__} lacks")
        self.deal, self.global_size = deal, global_size
        self.sources, self.processor, self.micro_size = list(sources), processor, micro_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle_window, self.slice_size, self.num_workers = shuffle_window, slice_size, num_workers
        self.dpo = dpo
        # a finite stream ends after max_epochs x (all sources' samples) global positions
        self.end = None if max_epochs is None else max_epochs * sum(s.n_samples for s in self.sources)
        self._state = self._order().state_dict()
        self.skipped: list[dict[str, Any]] = []  # refused samples handed out so far: {"sample_id", "reason"}

    def _order(self) -> GlobalOrder:
        return GlobalOrder(self.sources, seed=self.seed, slice_size=self.slice_size, window=self.shuffle_window)

    # -- resumable state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where the global order stands after the last micro-batch this rank handed out (JSON-able)."""
        return json.loads(json.dumps(self._state))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        order = self._order()
        order.load_state_dict(state)  # checks it fits these sources
        inside = state.get("step_micro")
        if inside is not None and (self.deal != "vision" or inside["world_size"] != self.world_size):
            raise ValueError(f"loader state saved inside a step of a vision deal on {inside['world_size']} ranks "
                             f"cannot continue as deal {self.deal} on {self.world_size}; resume from a step boundary")
        self._state = {**order.state_dict(), **({"step_micro": inside} if inside is not None else {})}

    def _left(self, order: GlobalOrder) -> int:
        return (self.end or 1 << 62) - order.position

    def plans(self) -> Iterator[tuple[list[SampleRef], dict]]:
        """This rank's micro-batches from the current state: (sample addresses, order state after it)."""
        order = self._order()
        order.load_state_dict(self._state)
        if self.deal == "vision":
            yield from self._vision_plans(order, self._state.get("step_micro", {}).get("done", 0))
            return
        per_round = self.micro_size * self.world_size
        while self.end is None or order.position < self.end:
            refs = [order.next() for _ in range(min(per_round, self._left(order)))]
            mine = refs[self.rank::self.world_size]
            if not mine:
                return
            yield mine, order.state_dict()

    def _vision_plans(self, order: GlobalOrder, done: int) -> Iterator[tuple[list[SampleRef], dict]]:
        """Per step: the block's records (JSON only) -> planned visual tokens -> this rank's share of the deal."""
        reader = ShardReader()  # the main process's own offset tables (the workers keep theirs)
        urls = [[s.url for s in src.shards] for src in self.sources]
        while self.end is None or order.position < self.end:
            start = order.state_dict()
            refs = [order.next() for _ in range(min(self.global_size, self._left(order)))]
            records = [json.loads(reader.read(urls[r.source][r.shard], r.index, only="json")["json"]) for r in refs]
            share = balance_ranks(planned_visual_tokens(records, self.processor), self.world_size)[self.rank]
            mine = [refs[i] for i in share]
            if not mine:
                return
            batches = [mine[k:k + self.micro_size] for k in range(0, len(mine), self.micro_size)]
            end = order.state_dict()
            for m in range(done, len(batches)):
                last = m == len(batches) - 1
                yield batches[m], end if last else {**start, "step_micro": {"done": m + 1,
                                                                            "world_size": self.world_size}}
            done = 0

    # -- iteration ---------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        dataset = _MicroBatches(self.sources, self.processor, self.dpo)
        arrived = iter(DataLoader(dataset, sampler=self.plans(), batch_size=None, num_workers=self.num_workers,
                                  collate_fn=_as_is, multiprocessing_context=_worker_context(self.num_workers)))
        try:
            for batch, state in arrived:
                self.skipped += batch["skipped"]
                self._state = state
                yield batch
        finally:
            del arrived  # shuts the workers down (also when the consumer stops early)


def build_loader(sources: str | Path | Sequence[Source], processor: SampleProcessor, *, micro_size: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0, shuffle_window: int = 1000,
                 slice_size: int = 64, dpo: bool = False, num_workers: int = 0,
                 max_epochs: int | None = None, deal: str = "strided", global_size: int | None = None) -> ShardLoader:
    """The rank's micro-batch stream over a blend of shard sets, or the one set under a folder (see
    :class:`ShardLoader`)."""
    if isinstance(sources, (str, Path)):
        sources = [Source.from_root("shards", sources)]
    return ShardLoader(sources, processor, micro_size=micro_size, rank=rank, world_size=world_size, seed=seed,
                       shuffle_window=shuffle_window, slice_size=slice_size, num_workers=num_workers, dpo=dpo,
                       max_epochs=max_epochs, deal=deal, global_size=global_size)


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
