"""One bad request must cost only itself: run a batch, and when the batch call fails, each request alone.

Captioning, perplexity scoring and DPO generation all call an engine on batches; a single undecodable
video or over-long prompt would otherwise fail the whole batch.

    results = per_request(lambda batch: engine.generate(batch, params), requests, retries=2, backoff_s=1.0)
    # one entry per request, in order: the engine's result, or the exception that request raised alone
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

log = logging.getLogger(__name__)

R = TypeVar("R")
T = TypeVar("T")


def per_request(call: Callable[[list[R]], Sequence[T]], requests: list[R], *, retries: int = 0,
                backoff_s: float = 0.0) -> list[T | Exception]:
    """``call(requests)`` once; if it raises, ``call([r])`` for each request, retried up to ``retries`` more
    times with exponential backoff from ``backoff_s``. An entry is the exception of a request that kept
    failing alone; deciding what such a failure means (the input's fault, or the engine's) is the caller's."""
    try:
        return list(call(requests))
    except Exception as batch_error:  # noqa: BLE001 - isolate the failing request(s) below
        log.warning("batch of %d failed (%s: %s); running its requests one by one", len(requests),
                    type(batch_error).__name__, batch_error)
    out: list[T | Exception] = []
    for request in requests:
        delay = backoff_s
        for attempt in range(retries + 1):
            try:
                out.append(call([request])[0])
                break
            except Exception as e:  # noqa: BLE001 - recorded per request
                if attempt == retries:
                    out.append(e)
                else:
                    time.sleep(delay)
                    delay *= 2
    return out


def error_text(error: Exception) -> str:
    """How a request's failure is stored: ``Type: message``."""
    return f"{type(error).__name__}: {error}"
