"""The train module: owns the model, its per-module optimizer, the schedule and the DeepSpeed engine.

    module = TrainModule(model, spec, world_size=1, device="cpu")
    stats = module.train_step(micro_batches)   # one optimizer step (gradient accumulation inside)

It knows the objective (next-token or DPO) and nothing about data order, logging
or checkpoint cadence; those hang off the loop as callbacks.
"""
from __future__ import annotations

import functools
from typing import Iterator

import torch
from torch import nn

from trainers.deepspeed_config import build_ds_config, check_engine_matches_spec
from trainers.losses import dpo_loss, ntp_loss, sequence_logprobs
from trainers.param_groups import build_optimizer, frozen_prefix
from trainers.schedule import build_scheduler
from trainers.spec import StageSpec

# Batch keys that are bookkeeping or targets, not model inputs.
NON_INPUT_KEYS = frozenset({"labels", "sample_id", "skipped", "__key__", "ref_chosen_logps", "ref_rejected_logps"})


def run_without_grad(module: nn.Module) -> None:
    """Make ``module`` build no autograd graph (a frozen module at the input end of the model)."""
    forward = module.forward

    @functools.wraps(forward)
    def no_grad_forward(*args, **kwargs):
        with torch.no_grad():
            return forward(*args, **kwargs)

    module.forward = no_grad_forward


def model_inputs(batch: dict, device: torch.device) -> dict:
    """The model's keyword inputs from a batch: tensors moved to ``device``, targets left out."""
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items() if k not in NON_INPUT_KEYS}


def count_tokens(batch: dict) -> int:
    """Tokens the LLM processes in a batch (non-padding positions), summed over chosen/rejected for DPO."""
    if "chosen" in batch:
        return count_tokens(batch["chosen"]) + count_tokens(batch["rejected"])
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


class TrainModule:
    """Model + AdamW(per-module groups) + LambdaLR wrapped by ``deepspeed.initialize``, checked against the spec."""

    def __init__(self, model: nn.Module, spec: StageSpec, world_size: int, device: str = "cpu",
                 source: str = "spec"):
        import deepspeed

        self.spec = spec
        for name in frozen_prefix(spec):
            run_without_grad(getattr(model, name))
        optimizer = build_optimizer(model, spec)
        scheduler = build_scheduler(optimizer, spec)
        self.ds_config = build_ds_config(spec, world_size, device, source)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config)
        check_engine_matches_spec(self.engine, spec)

    @property
    def model(self) -> nn.Module:
        return self.engine.module

    @property
    def step(self) -> int:
        """Optimizer steps taken (restored by checkpoint loading)."""
        return self.engine.global_steps

    def lrs(self) -> dict[str, float]:
        """Current LR of every trainable module (its groups share one)."""
        return {g["module"]: g["lr"] for g in self.engine.optimizer.param_groups}

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """The stage objective on one micro-batch: (scalar loss, float stats)."""
        device = self.engine.device
        if self.spec.loss.kind == "ntp":
            out = self.engine(**model_inputs(batch, device))
            loss, n_answer = ntp_loss(out.logits, batch["labels"].to(device))
            return loss, {"answer_tokens": n_answer}
        logps = {}
        for side in ("chosen", "rejected"):
            out = self.engine(**model_inputs(batch[side], device))
            logps[side] = sequence_logprobs(out.logits, batch[side]["labels"].to(device))  # (B,)
        terms = dpo_loss(logps["chosen"], logps["rejected"], batch["ref_chosen_logps"].to(device),
                         batch["ref_rejected_logps"].to(device), self.spec.loss.beta)
        return terms["loss"], {"reward_margin": float((terms["chosen_reward"] - terms["rejected_reward"]).mean()),
                               "reward_accuracy": float(terms["accuracy"])}

    def train_step(self, micro_batches: Iterator[dict]) -> dict:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches; returns this rank's stats."""
        self.engine.train()
        lrs = self.lrs()  # the LRs this step uses (the scheduler advances inside engine.step)
        losses, samples, tokens, extra = [], 0, 0, {}
        for _ in range(self.engine.gradient_accumulation_steps()):
            batch = next(micro_batches)
            loss, stats = self.loss(batch)
            self.engine.backward(loss)
            self.engine.step()
            losses.append(float(loss.detach()))
            samples += len(batch["sample_id"])
            tokens += count_tokens(batch)
            for k, v in stats.items():
                extra[k] = extra.get(k, 0.0) + v / self.engine.gradient_accumulation_steps()
        grad_norm = self.engine.get_global_grad_norm()
        return {"loss": sum(losses) / len(losses), "lr": lrs, "samples": samples, "tokens": tokens,
                "grad_norm": None if grad_norm is None else float(grad_norm), **extra}
