"""inference.isolation.per_request against a fake engine whose failures are scripted by hand.

    pytest tests/inference/test_isolation.py -q
"""
from __future__ import annotations

import pytest

from inference.isolation import error_text, per_request


class Flaky:
    """Doubles its inputs; a batch holding a ``bad`` item fails, ``flaky`` items fail their first ``n`` lone calls."""

    def __init__(self, flaky_failures: int = 0):
        self.calls: list[list] = []
        self.left = flaky_failures

    def __call__(self, batch: list):
        self.calls.append(list(batch))
        if "bad" in batch:
            raise ValueError("bad input")
        if "flaky" in batch:
            if self.left:
                self.left -= 1
                raise ConnectionError("lost worker")
            return ["ok" for _ in batch]
        return [x * 2 for x in batch]


def test_a_good_batch_is_one_call():
    engine = Flaky()
    assert per_request(engine, [1, 2, 3]) == [2, 4, 6]
    assert engine.calls == [[1, 2, 3]]


def test_a_bad_request_fails_alone_and_the_others_still_run():
    engine = Flaky()
    out = per_request(engine, [1, "bad", 3])
    assert out[0] == 2 and out[2] == 6
    assert isinstance(out[1], ValueError) and error_text(out[1]) == "ValueError: bad input"
    assert engine.calls == [[1, "bad", 3], [1], ["bad"], [3]]  # the batch once, then each alone


def test_lone_retries_with_exponential_backoff(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr("inference.isolation.time.sleep", sleeps.append)
    engine = Flaky(flaky_failures=2)
    out = per_request(engine, ["bad", "flaky"], retries=2, backoff_s=0.5)
    assert out[1] == "ok" and isinstance(out[0], ValueError)
    # bad: 3 lone tries (sleep 0.5, 1.0); flaky: fails twice (sleep 0.5, 1.0), then succeeds
    assert sleeps == [0.5, 1.0, 0.5, 1.0]
    assert engine.calls.count(["bad"]) == 3 and engine.calls.count(["flaky"]) == 3


@pytest.mark.parametrize("retries", [0, 1])
def test_a_request_that_keeps_failing_gives_its_last_error(retries, monkeypatch):
    monkeypatch.setattr("inference.isolation.time.sleep", lambda s: None)
    engine = Flaky()
    [out] = per_request(engine, ["bad"], retries=retries)
    assert isinstance(out, ValueError) and len(engine.calls) == 1 + 1 + retries
