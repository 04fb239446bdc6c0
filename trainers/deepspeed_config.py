"""DeepSpeed config for a stage: ZeRO-2, precision, clipping and batch arithmetic from world size.

    python -m trainers.deepspeed_config manifests/stages/stage2.yaml --world-size 416 --device cuda

The config has NO ``optimizer`` and NO ``scheduler`` block: ``deepspeed.initialize``
receives our AdamW (per-module groups) and LambdaLR objects. An ``optimizer`` block
would make DeepSpeed build its own optimizer over a single group and silently drop
the per-module learning rates, so :func:`build_ds_config` refuses to emit one and
:func:`check_engine_matches_spec` verifies the engine after start-up.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from trainers.spec import StageSpec, check_world_size


def resolve_precision(spec: StageSpec, device: str) -> str:
    """``bf16`` on GPU and ``fp32`` on CPU for ``auto``; bf16 on CPU is allowed only if asked for."""
    if spec.precision != "auto":
        return spec.precision
    return "bf16" if device == "cuda" else "fp32"


def build_ds_config(spec: StageSpec, world_size: int, device: str = "cpu", source: str = "spec",
                    load_universal: bool = False) -> dict:
    """The DeepSpeed JSON config for ``spec`` on ``world_size`` ranks (raises ConfigError if the batch doesn't divide).
    ``load_universal``: the checkpoint to resume is a universal one (another world size saved it:
    :func:`trainers.checkpointing.universal_tag`)."""
    accumulation = check_world_size(spec, world_size, source)
    precision = resolve_precision(spec, device)
    config = {
        "train_batch_size": spec.batch.global_size,
        "train_micro_batch_size_per_gpu": spec.batch.micro_size,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": spec.optim.grad_clip,
        "zero_optimization": {
            "stage": spec.zero_stage,
            "overlap_comm": device == "cuda",
            "contiguous_gradients": True,
            "reduce_scatter": True,
            "allgather_bucket_size": 200_000_000,
            "reduce_bucket_size": 200_000_000,
        },
        # Our torch AdamW is not on DeepSpeed's list of "tested" optimizers for ZeRO; it is fine.
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,  # our metrics callback logs; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
    }
    if load_universal:
        config["checkpoint"] = {"load_universal": True}
    assert "optimizer" not in config and "scheduler" not in config
    return config


def check_engine_matches_spec(engine, spec: StageSpec) -> None:
    """After ``deepspeed.initialize``: the engine's groups and LRs are ours, module by module.

    Raises RuntimeError naming the first group whose LR or weight decay differs, or a
    missing/extra group (what happens if an ``optimizer`` block sneaks into the config).
    """
    from trainers.schedule import lr_factor

    groups = engine.optimizer.param_groups
    expected_names = {g for g in _expected_group_modules(engine.module, spec)}
    got_names = {g.get("name") for g in groups}
    if got_names != expected_names:
        raise RuntimeError(f"DeepSpeed optimizer groups {sorted(map(str, got_names))} differ from the spec's "
                           f"{sorted(expected_names)}; was an 'optimizer' block added to the config?")
    step = engine.global_steps
    factor = lr_factor(step, spec.schedule, spec.total_steps())
    for group in groups:
        want = spec.lr_of(group["module"]) * factor
        if not math.isclose(group["lr"], want, rel_tol=1e-9):
            raise RuntimeError(f"group {group['name']}: engine LR {group['lr']} != spec {want} at step {step}")
        decay = group["name"].endswith("/decay")
        want_wd = spec.optim.weight_decay if decay else 0.0
        if group["weight_decay"] != want_wd:
            raise RuntimeError(f"group {group['name']}: weight decay {group['weight_decay']} != {want_wd}")


def _expected_group_modules(model, spec: StageSpec) -> set[str]:
    from trainers.param_groups import decays, module_of

    return {f"{module_of(n)}/{'decay' if decays(n, p) else 'no_decay'}"
            for n, p in model.named_parameters() if spec.modules[module_of(n)].trainable}


def main() -> None:
    import argparse

    from trainers.spec import load_stage

    ap = argparse.ArgumentParser(description="Print the DeepSpeed config generated for a stage spec.")
    ap.add_argument("spec", type=Path)
    ap.add_argument("--world-size", type=int, required=True)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    args = ap.parse_args()
    spec = load_stage(args.spec)
    print(json.dumps(build_ds_config(spec, args.world_size, args.device, str(args.spec)), indent=2))


if __name__ == "__main__":
    main()
