"""One way to run engines over rows: in this process, or on Ray Data with one actor pool per engine.

    stages = [MapStage(decode_media, {"video_frames": 8}, num_cpus=0.25),
              EngineStage(CaptionStage, captioner.engine, args=(roster_json,), kwargs={"name": "a"})]
    for rows in run_stages(work, stages, batch_size=8, use_ray=True):
        write(rows)                                   # one catalog transaction per batch

A step (captioning, perplexity scoring) lists its work as rows (dicts of plain Python values) and
its steps as stages; each stage maps a batch, a dict of equal-length column lists, to a batch.
An engine stage is a callable class built from picklable constructor arguments that keeps its
engine in ``self.engine``. In this process every stage is built once and its engine is closed at
the end; on Ray each engine stage is an actor pool of ``engine.num_replicas`` actors holding
``engine.gpus_per_replica`` GPUs each, and a map stage is a CPU task. Either way the stage sees
columns of plain Python values (Arrow is the format between stages in both modes, so a column Ray
could not carry fails in-process too), and the caller gets the rows back, ``batch_size`` at a time
(the last batch may be shorter; on Ray, batches come in no fixed order).

Decoding overlaps generation in both modes, so engines do not wait on the CPU stage: on Ray, Ray Data's
streaming executor runs the map tasks while the actor pools work; in this process, the map stages that
come before the first engine stage run up to ``prefetch`` batches ahead in a background thread (PyAV,
PIL and NumPy release the GIL while they decode), and the engines run in the calling thread.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from core import progress
from inference.config import EngineConfig

Batch = dict[str, list[Any]]
"""Columns of equal length: what every stage takes and returns."""


@dataclass(frozen=True)
class EngineStage:
    """A stage that owns an engine: ``cls(*args, **kwargs)`` loads it into ``.engine``; calling it maps a batch."""

    cls: type
    engine: EngineConfig
    """Placement of the pool on Ray (replicas, GPUs); the stage loads the engine itself from its arguments."""
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    num_cpus: float = 1.0
    """CPUs each Ray actor reserves."""


@dataclass(frozen=True)
class MapStage:
    """A stage without an engine (e.g. media decoding): ``fn(batch, **kwargs) -> batch``, a CPU task on Ray."""

    fn: Callable[..., Batch]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    num_cpus: float = 1.0


Stage = EngineStage | MapStage


def run_stages(rows: list[dict[str, Any]], stages: list[Stage], *, batch_size: int, use_ray: bool,
               ray_settings=None, prefetch: int = 2, label: str = "rows") -> Iterator[list[dict[str, Any]]]:
    """Run ``rows`` through ``stages`` in order; yield the finished rows, ``batch_size`` per batch.

    ``prefetch``: in this process, how many batches the leading map stages may run ahead of the engines
    (0: one stage after the other, the baseline ``benchmarks/captions.py`` compares against).
    ``label``: the progress task (:mod:`core.progress`) that counts the rows as their batches come back.
    """
    if not rows:
        return
    with progress.task(label, total=len(rows)) as bar:
        batches = (_on_ray(rows, stages, batch_size, ray_settings) if use_ray
                   else _in_process(rows, stages, batch_size, prefetch))
        for batch in batches:
            yield batch
            bar.advance(len(batch))


def _in_process(rows: list[dict[str, Any]], stages: list[Stage], batch_size: int,
                prefetch: int) -> Iterator[list[dict[str, Any]]]:
    n_lead = next((i for i, s in enumerate(stages) if isinstance(s, EngineStage)), len(stages))
    lead, rest = stages[:n_lead], stages[n_lead:]

    def prepared(start: int):
        table = _table(_columns_of(rows[start:start + batch_size]))
        for s in lead:
            table = _table(s.fn(_columns(table), **s.kwargs))
        return table

    built = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as ahead:
        starts = iter(range(0, len(rows), batch_size))
        pending: deque = deque()

        def refill() -> None:
            """Top up the batches in flight (``prefetch=0``: compute the next one here, when none is left)."""
            while len(pending) < max(1, prefetch) and (start := next(starts, None)) is not None:
                pending.append(ahead.submit(prepared, start) if prefetch else _done(prepared(start)))

        try:
            refill()  # decoding starts while the engines load
            for s in rest:
                built.append(s.cls(*s.args, **s.kwargs) if isinstance(s, EngineStage) else None)
            while refill() or pending:
                table = pending.popleft().result()
                if prefetch:
                    refill()  # the next batches decode while the engines work on this one
                for s, obj in zip(rest, built):
                    table = _table(obj(_columns(table)) if obj is not None else s.fn(_columns(table), **s.kwargs))
                yield table.to_pylist()
        finally:
            for f in pending:
                f.cancel()
            for obj in built:
                if obj is not None:
                    obj.engine.close()


def _done(table) -> Future:
    """A batch computed in the calling thread (``prefetch=0``: nothing runs ahead)."""
    future: Future = Future()
    future.set_result(table)
    return future


def _on_ray(rows: list[dict[str, Any]], stages: list[Stage], batch_size: int,
            ray_settings) -> Iterator[list[dict[str, Any]]]:
    import ray.data

    from core.ray_runtime import ensure_ray

    ensure_ray(ray_settings)
    ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / batch_size)))
    for s in stages:
        if isinstance(s, EngineStage):
            ds = ds.map_batches(_Actor, fn_constructor_args=(s.cls, s.args, dict(s.kwargs)), batch_size=batch_size,
                                compute=ray.data.ActorPoolStrategy(size=s.engine.num_replicas),
                                num_cpus=s.num_cpus, num_gpus=s.engine.gpus_per_replica, batch_format="pyarrow")
        else:
            ds = ds.map_batches(_apply, fn_args=(s.fn, dict(s.kwargs)), batch_size=batch_size, num_cpus=s.num_cpus,
                                batch_format="pyarrow")
    for table in ds.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
        yield table.to_pylist()


class _Actor:
    """Ray Data actor around an engine stage: Arrow in, plain Python columns to the stage, Arrow out."""

    def __init__(self, cls: type, args: tuple, kwargs: dict[str, Any]):
        self.stage = cls(*args, **kwargs)

    def __call__(self, table):
        return _table(self.stage(_columns(table)))


def _apply(table, fn: Callable[..., Batch], kwargs: dict[str, Any]):
    return _table(fn(_columns(table), **kwargs))


def _columns_of(rows: Iterable[dict[str, Any]]) -> Batch:
    rows = list(rows)
    return {k: [r[k] for r in rows] for k in rows[0]}


def _columns(table) -> Batch:
    return {name: table.column(name).to_pylist() for name in table.column_names}


def _table(batch: Batch):
    import pyarrow as pa

    return pa.Table.from_pydict(batch)
