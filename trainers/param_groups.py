"""Optimizer parameter groups from a stage spec: one group per (module, decay / no-decay).

    groups = build_param_groups(model, spec)   # list of dicts for torch.optim.AdamW

Freezing happens here too, because "which parameters train" and "which
parameters the optimizer sees" must be the same decision: frozen modules get
``requires_grad=False`` and never reach the optimizer (no Adam state), and every
trainable parameter lands in exactly one group (asserted). Group names
(``"ifa/decay"``) carry the module, so LR checks and metrics can be per module.
"""
from __future__ import annotations

import torch
from torch import nn

from trainers.spec import MODULES, StageSpec


def module_of(param_name: str) -> str:
    """The Mavors submodule (``ive``/``ifa``/``projector``/``llm``) a parameter belongs to."""
    head = param_name.split(".", 1)[0]
    if head not in MODULES:
        raise ValueError(f"parameter {param_name!r} is outside the modules {list(MODULES)}; "
                         "every Mavors parameter must belong to one of them")
    return head


def decays(name: str, param: nn.Parameter) -> bool:
    """Weight decay applies to matrices only: not to biases, norm weights or other 1-D parameters."""
    return param.ndim >= 2 and not name.endswith(".bias")


def apply_freeze(model: nn.Module, spec: StageSpec) -> None:
    """Set ``requires_grad`` per module from the spec (also re-enables modules a previous stage froze)."""
    for name, param in model.named_parameters():
        param.requires_grad_(spec.modules[module_of(name)].trainable)


def build_param_groups(model: nn.Module, spec: StageSpec) -> list[dict]:
    """Freeze per spec and return AdamW groups ``{name, module, params, lr, weight_decay}``.

    ``lr`` is the module's peak LR (base × lr_scale); the schedule multiplies it by a
    common factor, so the ratios between modules hold at every step.
    """
    apply_freeze(model, spec)
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    names: dict[tuple[str, bool], list[str]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = (module_of(name), decays(name, param))
        buckets.setdefault(key, []).append(param)
        names.setdefault(key, []).append(name)
    groups = []
    for module in MODULES:
        for decay in (True, False):
            if (module, decay) not in buckets:
                continue
            groups.append({
                "name": f"{module}/{'decay' if decay else 'no_decay'}",
                "module": module,
                "params": buckets[(module, decay)],
                "param_names": names[(module, decay)],
                "lr": spec.lr_of(module),
                "initial_lr": spec.lr_of(module),
                "weight_decay": spec.optim.weight_decay if decay else 0.0,
            })
    assert_partition(model, groups)
    return groups


def assert_partition(model: nn.Module, groups: list[dict]) -> None:
    """Every trainable parameter is in exactly one group; no frozen parameter is in any."""
    seen: dict[int, str] = {}
    for group in groups:
        for p in group["params"]:
            if id(p) in seen:
                raise AssertionError(f"a parameter is in both {seen[id(p)]} and {group['name']}")
            if not p.requires_grad:
                raise AssertionError(f"frozen parameter in optimizer group {group['name']}")
            seen[id(p)] = group["name"]
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise AssertionError(f"trainable parameters in no optimizer group: {missing[:5]}")


def build_optimizer(model: nn.Module, spec: StageSpec) -> torch.optim.AdamW:
    """AdamW over the spec's groups (DeepSpeed receives this object, never an ``optimizer`` config block)."""
    groups = build_param_groups(model, spec)
    return torch.optim.AdamW(groups, lr=spec.optim.lr, betas=spec.optim.betas, eps=spec.optim.eps,
                             weight_decay=spec.optim.weight_decay)


def frozen_prefix(spec: StageSpec) -> list[str]:
    """Modules that can run under ``torch.no_grad``: frozen ones before the first trainable one.

    A frozen LLM still needs autograd (gradients flow through it to the projector);
    a frozen IVE at the input end does not, so it runs without building a graph.
    """
    prefix = []
    for module in MODULES:
        if spec.modules[module].trainable:
            break
        prefix.append(module)
    return prefix
