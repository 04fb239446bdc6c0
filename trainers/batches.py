"""The stage's data as a resumable stream of micro-batches for this rank, and DPO pairs for scoring.

    stream = build_stream(spec, model, processor, rank, world, work_dir)
    state = stream.state_dict(); stream.load_state_dict(state)   # resume mid-epoch

A stream yields dicts with ``sample_id`` (list), model inputs (``input_ids`` (B, T),
``attention_mask``, visual tensors) and ``labels`` (answer tokens, -100 elsewhere);
DPO streams yield ``chosen`` and ``rejected`` dicts of the same shape instead.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from trainers.packing import BudgetStream, DeferredCollate
from trainers.spec import StageSpec
from trainers.synthetic import SyntheticStream


def vocab_size(model) -> int:
    cfg = model.config
    return getattr(getattr(cfg, "text_config", None), "vocab_size", None) or cfg.vocab_size


def data_dir(spec: StageSpec, work_dir: Path) -> Path | None:
    """Directory of the stage's shards, as the driver handed it in ``data.shards`` (None for synthetic data and
    blends: :func:`data_sources` lists a blend's folders).

    A rank never derives a folder: ``data.mixture`` is resolved once by the driver
    (:func:`trainers.chain.mixture_data`) and reaches the ranks as ``--data-json``.
    """
    if spec.data.mixture is not None:
        raise ValueError(f"stage {spec.name}: data.mixture {spec.data.mixture} was not resolved to its shard folder "
                         "(the driver passes it as data.shards: trainers.chain.mixture_data)")
    return spec.path(spec.data.shards, work_dir) if spec.data.shards is not None else None


def data_dirs(spec: StageSpec, work_dir: Path) -> list[Path]:
    """Every shard folder the stage reads: ``data.shards``, or each ``data.blend`` entry's; [] for synthetic."""
    if spec.data.blend is not None:
        return [spec.path(b.shards, work_dir) for b in spec.data.blend]
    directory = data_dir(spec, work_dir)
    return [] if directory is None else [directory]


def data_sources(spec: StageSpec, work_dir: Path) -> list:
    """The stage's shard sets as :class:`trainers.data.Source`: one named ``shards`` for ``data.shards``, one
    per ``data.blend`` entry by its name and weight."""
    from trainers.data import Source

    if spec.data.blend is not None:
        return [Source.from_root(b.key, d, b.weight) for b, d in zip(spec.data.blend, data_dirs(spec, work_dir))]
    return [Source.from_root("shards", d) for d in data_dirs(spec, work_dir)]


def build_stream(spec: StageSpec, model, processor, rank: int, world: int, work_dir: Path):
    """This rank's micro-batch stream for the stage. In ``tokens``/``packed`` batch modes the planned units of
    ``micro_size`` samples arrive unpadded and :class:`trainers.packing.BudgetStream` re-forms each step's
    samples into token-budget micro-batches (the samples of every step are the same in all modes). Shard batches
    carry the processor's frame rows (:mod:`model.processing`): the model makes the tubelets on its device."""
    budget = spec.batch.mode != "samples"
    if spec.data.synthetic is not None:
        stream = synthetic_stream(spec, model, processor, spec.batch.micro_size, rank, world, deferred=budget)
        collate = stream.collate_samples
    else:
        from trainers.data import build_loader

        if hasattr(processor, "with_frame_rows"):  # an image's frame once, not F times, from worker to model
            processor = processor.with_frame_rows()
        stream = build_loader(data_sources(spec, work_dir), DeferredCollate(processor) if budget else processor,
                              micro_size=spec.batch.micro_size, rank=rank, world_size=world, seed=spec.data.seed,
                              shuffle_window=spec.data.shuffle_window, slice_size=spec.data.slice_size,
                              num_workers=spec.data.workers, dpo=spec.loss.kind == "dpo", deal=spec.data.deal,
                              global_size=spec.batch.global_size)
        collate = processor.collate if budget else None
    if not budget:
        return stream
    return BudgetStream(stream, spec.batch.accumulation(world), spec.batch.mode, spec.batch.max_tokens, collate)


def synthetic_stream(spec: StageSpec, model, processor, micro_size: int, rank: int, world: int,
                     deferred: bool = False) -> SyntheticStream:
    cfg = spec.data.synthetic
    return SyntheticStream(cfg, vocab_size(model), micro_size, rank, world, spec.data.seed,
                           dpo=spec.loss.kind == "dpo", processor=processor if cfg.image_px else None,
                           deferred=deferred)


def pair_batches(spec: StageSpec, model, processor, rank: int, world: int, work_dir: Path) -> Iterator[dict]:
    """Every DPO pair once (rank's share: pairs ``rank, rank+world, ...``), in micro-batches, for reference scoring."""
    if spec.data.synthetic is not None:
        stream = synthetic_stream(spec, model, processor, 1, 0, 1)
        ids = list(range(rank, spec.data.synthetic.n_samples, world))
        for i in range(0, len(ids), spec.batch.micro_size):
            yield stream.collate([stream.sample(j) for j in ids[i:i + spec.batch.micro_size]])
        return
    from trainers.data import iter_pairs_once

    yield from iter_pairs_once(data_dir(spec, work_dir), processor, micro_size=spec.batch.micro_size,
                               rank=rank, world_size=world)
