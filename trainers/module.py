"""The train module: owns the model, its per-module optimizer, the schedule and the DeepSpeed engine.

    module = TrainModule(model, spec, world_size=1, device="cpu")
    stats = module.train_step(micro_batches)   # one optimizer step (gradient accumulation inside)

It knows the objective (next-token or DPO) and nothing about data order, logging
or checkpoint cadence; those hang off the loop as callbacks.

The loss of a step is the mean over the whole global batch (all ranks x accumulation steps): the mean
over its answer tokens for next-token prediction, over its pairs for DPO. A step first counts them
(one all-reduce over this rank's planned micro-batches), then each micro-batch contributes
sum / global count; a rank with 3 answer tokens weighs 3/300 of one with 300, as in one process.
A micro-batch whose every sample the processor refused still runs forward and backward, on a
one-token stand-in whose loss is multiplied by 0, so every rank steps in lockstep; the same stand-in fills
up a rank whose token-budget step (:mod:`trainers.packing`) has fewer micro-batches than another rank's.
"""
from __future__ import annotations

import functools
from typing import Iterator

import torch
from torch import nn

from trainers.deepspeed_config import build_ds_config, check_engine_matches_spec
from trainers.losses import IGNORE_INDEX, answer_mask, dpo_loss, ntp_loss, sequence_logprobs
from trainers.metrics import all_reduce
from trainers.param_groups import build_optimizer, frozen_prefix
from trainers.schedule import build_scheduler
from trainers.spec import StageSpec

# Batch keys that are bookkeeping or targets, not model inputs.
NON_INPUT_KEYS = frozenset({"labels", "sample_id", "skipped", "__key__", "ref_chosen_logps", "ref_rejected_logps",
                            "last_of_step", "sample_lengths"})


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


def count_positions(batch: dict) -> int:
    """Positions the LLM computes in a batch, padding included (rows x width): with :func:`count_tokens`, the padded
    fraction."""
    if "chosen" in batch:
        return count_positions(batch["chosen"]) + count_positions(batch["rejected"])
    return batch["input_ids"].numel()


def visual_tokens(batch: dict, visual_ids: tuple[int, ...]) -> int:
    """Visual tokens the LLM receives in a batch (its image/video placeholders): the vision path's work."""
    if "chosen" in batch:
        return visual_tokens(batch["chosen"], visual_ids) + visual_tokens(batch["rejected"], visual_ids)
    if "input_ids" not in batch or not visual_ids:
        return 0
    return int(torch.isin(batch["input_ids"], torch.tensor(visual_ids)).sum())


def step_batches(micro_batches: Iterator[dict], accumulation: int) -> list[dict]:
    """The micro-batches of one optimizer step: ``accumulation`` of them, or, from a token-budget stream
    (:class:`trainers.packing.BudgetStream`), those up to the one marked ``last_of_step``."""
    batches = [next(micro_batches)]
    if "last_of_step" not in batches[0]:
        return batches + [next(micro_batches) for _ in range(accumulation - 1)]
    while not batches[-1]["last_of_step"]:
        batches.append(next(micro_batches))
    return batches


def loss_units(batch: dict, dpo: bool) -> int:
    """What the stage's loss averages over, in one micro-batch: pairs (DPO) or answer tokens (next-token)."""
    if dpo or not batch["sample_id"]:
        return len(batch["sample_id"])
    n = int(answer_mask(batch["labels"]).sum())
    if n == 0:
        raise ValueError(f"micro-batch {batch['sample_id'][:3]} has no answer tokens (all labels are -100); "
                         "check the collator's answer mask")
    return n


def stand_in(batch: dict, dpo: bool, pad_id: int) -> dict:
    """The batch to run for a micro-batch whose every sample was refused: one text-only token, no answer
    (its loss is multiplied by 0; running it keeps this rank's collectives in step with the others)."""
    if batch["sample_id"]:
        return batch
    side = {"input_ids": torch.full((1, 1), pad_id), "attention_mask": torch.ones(1, 1, dtype=torch.long),
            "labels": torch.full((1, 1), IGNORE_INDEX)}
    if dpo:
        return {**batch, "chosen": side, "rejected": side, "ref_chosen_logps": torch.zeros(1),
                "ref_rejected_logps": torch.zeros(1)}
    return {**batch, **side}


class TrainModule:
    """Model + AdamW(per-module groups) + LambdaLR wrapped by ``deepspeed.initialize``, checked against the spec."""

    def __init__(self, model: nn.Module, spec: StageSpec, world_size: int, device: str = "cpu",
                 source: str = "spec", load_universal: bool = False):
        import deepspeed

        self.spec = spec
        for name in frozen_prefix(spec):
            run_without_grad(getattr(model, name))
        optimizer = build_optimizer(model, spec)
        scheduler = build_scheduler(optimizer, spec)
        self.ds_config = build_ds_config(spec, world_size, device, source, load_universal)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config)
        check_engine_matches_spec(self.engine, spec)
        text_config = getattr(model.config, "text_config", model.config)
        self.pad_id = getattr(text_config, "pad_token_id", None) or 0
        self.visual_ids = tuple(i for i in (getattr(model.config, "image_token_id", None),
                                            getattr(model.config, "video_token_id", None)) if i is not None)

    @property
    def model(self) -> nn.Module:
        return self.engine.module

    @property
    def step(self) -> int:
        """Optimizer steps taken (restored by checkpoint loading)."""
        return self.engine.global_steps

    @property
    def dpo(self) -> bool:
        return self.spec.loss.kind == "dpo"

    def lrs(self) -> dict[str, float]:
        """Current LR of every trainable module (its groups share one)."""
        return {g["module"]: g["lr"] for g in self.engine.optimizer.param_groups}

    def loss(self, batch: dict, normaliser: int) -> tuple[torch.Tensor, dict]:
        """This micro-batch's share of the global-batch loss (sum over its tokens or pairs / ``normaliser``) and
        its float stats, shares of global means too (they add up over micro-batches and ranks)."""
        device = self.engine.device
        run = stand_in(batch, self.dpo, self.pad_id)
        empty = 0.0 if not batch["sample_id"] else 1.0
        if not self.dpo:
            out = self.engine(**model_inputs(run, device))
            loss, _ = ntp_loss(out.logits, run["labels"].to(device), normaliser)
            return loss * empty, {}
        logps = {}
        for side in ("chosen", "rejected"):
            out = self.engine(**model_inputs(run[side], device))
            logps[side] = sequence_logprobs(out.logits, run[side]["labels"].to(device))  # (B,)
        terms = dpo_loss(logps["chosen"], logps["rejected"], run["ref_chosen_logps"].to(device),
                         run["ref_rejected_logps"].to(device), self.spec.loss.beta, normaliser)
        margin = terms["chosen_reward"] - terms["rejected_reward"]  # (B,)
        return terms["loss"] * empty, {"reward_margin": empty * float(margin.sum()) / normaliser,
                                       "reward_accuracy": empty * float((margin > 0).sum()) / normaliser}

    def train_step(self, micro_batches: Iterator[dict]) -> dict:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches; returns this rank's stats.

        ``loss`` (and DPO's ``reward_*``) are this rank's shares: summed over ranks they give the global batch's
        mean. DeepSpeed averages gradients over the data-parallel ranks, so each share is backpropagated times
        the world size, without its own division by the accumulation steps (``scale_wrt_gas=False``).

        A token-budget stream gives a step as many micro-batches as its samples need, which may differ between
        ranks: every rank runs the largest count (the others as empty stand-ins), since each backward reduces
        gradients (ZeRO-2) and collectives must pair up; the last one is marked as the accumulation boundary."""
        self.engine.train()
        lrs = self.lrs()  # the LRs this step uses (the scheduler advances inside engine.step)
        batches = step_batches(micro_batches, self.engine.gradient_accumulation_steps())
        local = sum(loss_units(b, self.dpo) for b in batches)
        normaliser = max(1, int(all_reduce([float(local)], mean=False)[0]))
        n_batches = int(all_reduce([float(len(batches))], mean=False, maximum=True)[0])
        batches += [{"sample_id": []} for _ in range(n_batches - len(batches))]
        loss_share, samples, tokens, positions, visual, extra = 0.0, 0, 0, 0, 0, {}
        for i, batch in enumerate(batches):
            self.engine.set_gradient_accumulation_boundary(i == len(batches) - 1)
            loss, stats = self.loss(batch, normaliser)
            self.engine.backward(loss * self.engine.dp_world_size, scale_wrt_gas=False)
            self.engine.step()
            loss_share += float(loss.detach())
            samples += len(batch["sample_id"])
            tokens += count_tokens(batch) if batch["sample_id"] else 0
            positions += count_positions(batch) if batch["sample_id"] else 0
            visual += visual_tokens(batch, self.visual_ids) if batch["sample_id"] else 0
            for k, v in stats.items():
                extra[k] = extra.get(k, 0.0) + v
        grad_norm = self.engine.get_global_grad_norm()
        return {"loss": loss_share, "lr": lrs, "samples": samples, "tokens": tokens, "positions": positions,
                "visual_tokens": visual, "micro_batches": len(batches),
                "skipped": [s for b in batches for s in b.get("skipped", [])],
                "sample_ids": [s for b in batches for s in b["sample_id"]],
                "grad_norm": None if grad_norm is None else float(grad_norm), **extra}
