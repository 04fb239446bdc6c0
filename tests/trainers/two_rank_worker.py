"""One rank of the two-process mixed-modality tests (test_mixed_ranks.py starts it twice; gloo, real DeepSpeed).

    RANK=r WORLD_SIZE=2 LOCAL_RANK=r MASTER_ADDR=127.0.0.1 MASTER_PORT=p python two_rank_worker.py MAVORS_DIR OUT_DIR

For each stage pattern (the shipped demo specs' freeze rules, LR scales and loss) it builds the tiny Mavors,
trains 2 optimizer steps (2 ranks x 2 accumulation steps x micro batch 2) on ``mixed_batches.rank_plan`` (and
``stage2-packed``: stage 2 on the same samples in packed rows, ``mixed_batches.packed_plan``, where the ranks' row
counts differ) and
writes ``OUT_DIR/<stage>.rank<r>.json``: sha256 of the full parameters after every step and of every module
before and after, each rank's loss share per step, and (rank 0) the stage's ``metrics.jsonl``. For stage2 and dpo rank 0 also saves the full gradient of step 1 (``<stage>.grad.pt``),
assembled with DeepSpeed's ``safe_get_full_grad`` right before the optimizer step.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # mixed_batches.py

STAGES = ("stage1", "stage1_5", "stage2", "dpo", "stage2-packed")
GRADIENT_STAGES = ("stage2", "dpo", "stage2-packed")


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def module_digests(model) -> dict[str, str]:
    return {m: digest(p for _, p in sorted(getattr(model, m).named_parameters()))
            for m in ("ive", "ifa", "projector", "llm")}


def stage_spec(stage: str, mavors_dir: str):
    from core.paths import MANIFESTS
    from trainers.spec import StageSpec, load_stage

    from mixed_batches import PACKED_MAX_TOKENS

    packed = stage.endswith("-packed")
    shipped = load_stage(MANIFESTS / "stages" / f"demo-{stage.removesuffix('-packed')}.yaml")
    return StageSpec.model_validate({
        "name": stage, "init": {"pretrained": mavors_dir}, "data": {"synthetic": {"n_samples": 8}},
        "modules": {m: s.model_dump(exclude_none=True) for m, s in shipped.modules.items()},
        "optim": {"lr": 1e-3}, "schedule": shipped.schedule.model_dump(), "loss": shipped.loss.model_dump(),
        "batch": {"global_size": 8, "micro_size": 2,
                  **({"mode": "packed", "max_tokens": PACKED_MAX_TOKENS} if packed else {})},
        "budget": {"steps": 2}})


def capture_full_gradient(module, into: dict) -> None:
    """Wrap ``engine.step`` so that, at the first accumulation boundary, the reduced full gradient of every
    trainable parameter is copied into ``into`` (a collective: every rank calls it in the same order)."""
    from deepspeed.utils import safe_get_full_grad

    engine, step = module.engine, module.engine.step

    def capturing_step(*args, **kwargs):
        if engine.is_gradient_accumulation_boundary() and not into:
            for name, p in engine.module.named_parameters():
                if p.requires_grad:
                    into[name] = safe_get_full_grad(p).detach().clone()
        return step(*args, **kwargs)

    engine.step = capturing_step


def run(stage: str, mavors_dir: str, out: Path, rank: int) -> None:
    from mixed_batches import PACKED_MAX_TOKENS, packed_plan, rank_plan
    from model.modeling import MavorsForConditionalGeneration
    from model.processing import MavorsProcessor
    from trainers.metrics import MetricsLogger
    from trainers.module import TrainModule

    spec = stage_spec(stage, mavors_dir)
    torch.manual_seed(0)
    model = MavorsForConditionalGeneration.from_pretrained(mavors_dir)
    processor = MavorsProcessor.from_pretrained(mavors_dir)
    if spec.batch.mode == "packed":
        steps = packed_plan(processor, PACKED_MAX_TOKENS)[rank]
    else:
        steps = rank_plan(processor, dpo=spec.loss.kind == "dpo")[rank]
    before = module_digests(model)
    module = TrainModule(model, spec, world_size=2)
    grads: dict = {}
    if stage in GRADIENT_STAGES:
        capture_full_gradient(module, grads)
    metrics = MetricsLogger(out / f"{stage}.metrics.jsonl", module)
    metrics.on_start(0)
    after_step, losses = [], []
    for step, micro_batches in enumerate(steps, 1):
        stats = module.train_step(iter(micro_batches))
        metrics.on_step(step, stats)
        after_step.append(digest(p for _, p in sorted(module.model.named_parameters())))
        losses.append(stats["loss"])
    result = {"stage": stage, "after_step": after_step, "losses": losses, "before": before,
              "after": module_digests(module.model)}
    (out / f"{stage}.rank{rank}.json").write_text(json.dumps(result))
    if grads and rank == 0:
        torch.save(grads, out / f"{stage}.grad.pt")


def main() -> None:
    import torch.distributed as dist

    from trainers.stage import init_distributed

    mavors_dir, out = sys.argv[1], Path(sys.argv[2])
    init_distributed("cpu")
    for stage in STAGES:
        run(stage, mavors_dir, out, dist.get_rank())
        dist.barrier()


if __name__ == "__main__":
    main()
