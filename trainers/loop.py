"""The training loop: optimizer steps until the budget, callbacks after each step.

    final_step = fit(module, stream, callbacks, start_step)

Everything else (what a step does, logging, checkpoints) lives in the module and
the callbacks (objects with ``on_start(step)``, ``on_step(step, stats)``, ``on_end(step)``).
"""
from __future__ import annotations


def fit(module, stream, callbacks: list, start_step: int = 0) -> int:
    """Train from ``start_step`` to the spec's total steps; returns the last step."""
    batches = iter(stream)
    total = module.spec.total_steps()
    for cb in callbacks:
        cb.on_start(start_step)
    step = start_step
    while step < total:
        stats = module.train_step(batches)
        step += 1
        for cb in callbacks:
            cb.on_step(step, stats)
    for cb in callbacks:
        cb.on_end(step)
    return step
