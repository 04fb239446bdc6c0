"""The engine pool: the same rows through the same stages in this process and on Ray Data give the same rows.

    pytest tests/inference/test_pool.py -q

A fake engine multiplies numbers; the expected rows are worked out in the test. Columns cover what the
steps carry: ints, floats, bytes, text, and a float column that is null for a whole first batch.
"""
from __future__ import annotations

import threading
from typing import ClassVar

import pytest

from inference import EngineConfig
from inference.pool import EngineStage, MapStage, run_stages

pytestmark = pytest.mark.usefixtures("ray_by_value")  # Ray workers get this module by value

ROWS = [{"x": i, "name": f"r{i}", "blob": bytes([i, 255 - i])} for i in range(10)]
ENGINE = EngineConfig(model_path="unused-fake", num_replicas=2)


class FakeEngine:
    """Multiplies by ``factor``; remembers whether it was closed (in-process only)."""

    made: ClassVar[list[FakeEngine]] = []

    def __init__(self, factor: int):
        self.factor, self.closed = factor, False
        FakeEngine.made.append(self)

    def run(self, values: list[int]) -> list[int]:
        return [v * self.factor for v in values]

    def close(self) -> None:
        self.closed = True


class Multiply:
    """An engine stage as the pipeline steps write them: built from picklable args, owns ``.engine``."""

    def __init__(self, factor: int, *, column: str):
        self.engine = FakeEngine(factor)
        self.column = column

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        assert all(type(v) is int for v in batch["x"]) and all(type(b) is bytes for b in batch["blob"])
        return {**batch, self.column: self.engine.run(batch["x"])}


def halve_from_four(batch: dict[str, list], *, start: int) -> dict[str, list]:
    """CPU map stage: x / 2 from ``start`` on, else null (a whole first batch of nulls)."""
    return {**batch, "half": [x / 2 if x >= start else None for x in batch["x"]]}


STAGES = [MapStage(halve_from_four, {"start": 4}, num_cpus=0.5),
          EngineStage(Multiply, ENGINE, (3,), {"column": "triple"}, num_cpus=0.5),
          EngineStage(Multiply, ENGINE, (5,), {"column": "quintuple"}, num_cpus=0.5)]


def expected() -> list[dict]:
    return [{**r, "half": r["x"] / 2 if r["x"] >= 4 else None, "triple": 3 * r["x"], "quintuple": 5 * r["x"]}
            for r in ROWS]


def test_in_process_rows_batches_and_closed_engines():
    FakeEngine.made.clear()
    batches = list(run_stages(ROWS, STAGES, batch_size=4, use_ray=False))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert [r for b in batches for r in b] == expected()
    assert len(FakeEngine.made) == 2 and all(e.closed for e in FakeEngine.made)  # built once, closed at the end


def test_engines_are_closed_when_a_stage_fails():
    class Failing(Multiply):
        def __call__(self, batch):
            raise RuntimeError("stage failed")

    FakeEngine.made.clear()
    with pytest.raises(RuntimeError, match="stage failed"):
        list(run_stages(ROWS, [EngineStage(Multiply, ENGINE, (3,), {"column": "t"}),
                               EngineStage(Failing, ENGINE, (5,), {"column": "q"})], batch_size=4, use_ray=False))
    assert len(FakeEngine.made) == 2 and all(e.closed for e in FakeEngine.made)


@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_in_process_decoding_runs_ahead_of_the_engines(prefetch):
    """The map stage decodes batch k+1 while the engine works on batch k (``prefetch`` batches ahead at most);
    with ``prefetch=0`` it waits for the engine. Events, not clocks, record what ran at the same time."""
    events: list[str] = []
    lock = threading.Lock()

    def log(what: str) -> None:
        with lock:
            events.append(what)

    def decode(batch: dict[str, list]) -> dict[str, list]:
        log(f"decode {batch['x'][0] // 2}")
        return batch

    class Slow(Multiply):
        def __call__(self, batch):
            k = batch["x"][0] // 2
            log(f"engine {k} start")
            ahead_done = threading.Event()
            # wait (bounded) for the decode of batch k+prefetch to be logged: it can only happen concurrently
            for _ in range(200):
                with lock:
                    if f"decode {k + prefetch}" in events or k + prefetch > 4:
                        ahead_done.set()
                if ahead_done.is_set() or not prefetch:
                    break
                threading.Event().wait(0.01)
            log(f"engine {k} end")
            return super().__call__(batch)

    rows = [{"x": i, "name": "", "blob": b""} for i in range(10)]
    out = list(run_stages(rows, [MapStage(decode), EngineStage(Slow, ENGINE, (2,), {"column": "y"})],
                          batch_size=2, use_ray=False, prefetch=prefetch))
    assert [r["y"] for b in out for r in b] == [2 * i for i in range(10)]
    for k in range(5):
        before_end = events[:events.index(f"engine {k} end")]
        decoded = max(int(e.split()[1]) for e in before_end if e.startswith("decode"))
        # prefetch 0: the next batch is decoded only once this one is done (one at a time, in order)
        assert decoded == (k if prefetch == 0 else min(k + prefetch, 4)), (prefetch, k, events)


def test_ray_gives_the_in_process_rows_in_committed_batches(ray_local):
    batches = list(run_stages(ROWS, STAGES, batch_size=4, use_ray=True))
    assert sorted(len(b) for b in batches) == [2, 4, 4]
    assert sorted((r for b in batches for r in b), key=lambda r: r["x"]) == expected()


def test_no_rows_start_nothing():
    assert list(run_stages([], STAGES, batch_size=4, use_ray=True)) == []


@pytest.mark.parametrize("device, tp, gpus", [("cpu", 1, 0), ("cpu", 2, 0), ("cuda", 1, 1), ("cuda", 2, 2),
                                              ("cuda:1", 2, 2)])
def test_gpus_per_replica(device, tp, gpus):
    assert EngineConfig(model_path="m", device=device, tensor_parallel_size=tp).gpus_per_replica == gpus
