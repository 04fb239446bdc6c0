"""The LR schedule as one multiplicative factor shared by every parameter group.

    sched = build_scheduler(optimizer, spec)   # torch LambdaLR; step() once per optimizer step

Each group's LR is ``peak_lr(module) * factor(step)``, so IVE/IFA stay at exactly
1/10 of the LLM's LR through warmup and cosine decay (paper §5.1).
"""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from trainers.spec import ScheduleSpec, StageSpec


def lr_factor(step: int, schedule: ScheduleSpec, total_steps: int) -> float:
    """Factor applied to every group's peak LR at optimizer step ``step`` (0-based).

    warmup: (step+1)/warmup for the first ``warmup_steps`` steps; then ``constant`` is 1 and
    ``cosine`` goes from 1 at the end of warmup to ``min_ratio`` at the last step.
    """
    if step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    if schedule.kind == "constant":
        return 1.0
    decay_steps = max(1, total_steps - 1 - schedule.warmup_steps)
    progress = min(1.0, (step - schedule.warmup_steps) / decay_steps)
    return schedule.min_ratio + (1 - schedule.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class StageFactor:
    """Picklable ``step -> factor`` for ``LambdaLR`` (DeepSpeed checkpoints the scheduler state)."""

    def __init__(self, schedule: ScheduleSpec, total_steps: int):
        self.schedule = schedule
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.schedule, self.total_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, spec: StageSpec) -> LambdaLR:
    """One ``LambdaLR`` whose single factor multiplies every group's peak (``initial_lr``)."""
    return LambdaLR(optimizer, StageFactor(spec.schedule, spec.total_steps()))
