"""Run one training stage in this process (one rank): build, resume, fit, export.

    python -m trainers.stage --spec manifests/stages/demo-stage1.yaml --run-dir mavors-work/train/demo

This is also the per-rank entry point the ``deepspeed`` launcher starts on every
node (see ``trainers.launch``); single-process runs call :func:`run_stage` directly.
Build order (OLMo-core style): model → data stream (→ DPO reference log-probs) →
train module (DeepSpeed) → callbacks → fit → export.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from core import progress
from core.faults import fault_point
from core.processes import free_port
from trainers.batches import build_stream, data_dir, pair_batches
from trainers.checkpointing import Checkpointer, universal_tag
from trainers.export import export_stage, is_exported, module_fingerprints, read_stage_record
from trainers.initialization import load_start
from trainers.loop import fit
from trainers.metrics import MetricsLogger, read_metrics
from trainers.module import TrainModule
from trainers.reference import WithReference, ensure_reference_logps, load_reference_logps
from trainers.spec import StageSpec, check_world_size, load_stage


@dataclass(frozen=True)
class StagePaths:
    """Where a stage writes, under ``<run dir>/<stage name>/``."""

    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def export(self) -> Path:
        return self.root / "export"


def stage_paths(run_dir: str | Path, name: str) -> StagePaths:
    return StagePaths(Path(run_dir) / name)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def init_distributed(device: str) -> None:
    """Join the process group the launcher set up, or make a one-process group (gloo on CPU, NCCL on GPU).

    The rank variables are set first, also when a group exists already: an in-process vLLM engine (the
    CPU build) makes a one-process group of its own without them, and DeepSpeed's engine then refuses to
    start for want of ``LOCAL_RANK``."""
    import deepspeed

    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, value)
    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo")


class StepProgress:
    """Loop callback: the optimizer steps done, on the stage's progress task (:mod:`core.progress`)."""

    def __init__(self, bar: progress.Task) -> None:
        self.bar = bar

    def on_start(self, step: int) -> None:
        self.bar.update(step)

    def on_step(self, step: int, stats: dict) -> None:
        self.bar.update(step)

    def on_end(self, step: int) -> None:
        pass


def run_stage(spec: StageSpec, run_dir: str | Path, work_dir: str | Path = ".", source: str = "spec",
              device: str | None = None, peak_flops: float | None = None,
              loader=load_start) -> dict:
    """Train one stage on this rank and export it; returns the stage record (also in ``export/stage.json``).

    ``loader(spec, run_dir, work_dir, source) -> (model, processor)`` builds the starting model.
    """
    device = device or default_device()
    paths = stage_paths(run_dir, spec.name)
    init_distributed(device)
    rank, world = dist.get_rank(), dist.get_world_size()
    check_world_size(spec, world, source)
    started = time.time()
    torch.manual_seed(spec.seed)
    model, processor = loader(spec, Path(run_dir), Path(work_dir), source)
    init_fingerprints = module_fingerprints(model)
    stream = build_stream(spec, model, processor, rank, world, Path(work_dir))
    if spec.loss.kind == "dpo":
        ref_dir = data_dir(spec, Path(work_dir)) or paths.root
        ref = ensure_reference_logps(model, lambda r, w: pair_batches(spec, model, processor, r, w, Path(work_dir)),
                                     ref_dir)
        stream = WithReference(stream, load_reference_logps(ref), ref)
    universal = universal_tag(paths.checkpoints, world)  # the newest checkpoint saved by another world size
    module = TrainModule(model, spec, world, device, source, load_universal=universal is not None)
    checkpointer = Checkpointer(paths.checkpoints, module, stream)
    start_step = checkpointer.resume(universal)
    seq_len = spec.data.synthetic.seq_len if spec.data.synthetic is not None else 0
    metrics = MetricsLogger(paths.metrics, module, peak_flops, seq_len)
    # The loop is the fault point trainer-<stage> (core.faults): MAVORS_FAULT_AT=trainer-<stage>@<n> hangs a
    # callback that SIGKILLs this rank right after step n (the resume tests).
    with fault_point(f"trainer-{spec.name}") as fault_callbacks, \
            progress.task(f"train {spec.name}", total=spec.total_steps()) as bar:
        final_step = fit(module, stream, [metrics, checkpointer, StepProgress(bar), *fault_callbacks], start_step)
    record = {"stage": spec.name, "spec": spec.model_dump(mode="json"), "spec_digest": spec.digest(), "source": source,
              "world_size": world, "steps": final_step, "samples": final_step * spec.batch.global_size,
              "resumed_from_step": start_step, "init_fingerprints": init_fingerprints,
              "final_loss": (read_metrics(paths.metrics) or [{}])[-1].get("loss") if rank == 0 else None,
              "started_at": started, "ended_at": time.time()}
    if rank == 0:
        export_stage(module.model, processor, paths.export, record)
    dist.barrier()
    return read_stage_record(paths.export) if is_exported(paths.export) else record


def main() -> None:
    ap = argparse.ArgumentParser(description="Run one training stage (one rank; the deepspeed launcher starts N).")
    ap.add_argument("--spec", type=Path, required=True)
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--work-dir", type=Path, default=Path("."))
    ap.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
    ap.add_argument("--data-json", default=None, help="replacement data section (JSON), from the chain")
    ap.add_argument("--peak-tflops", type=float, default=None, help="per-device peak, for the MFU estimate")
    args = ap.parse_args()
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    spec = load_stage(args.spec).with_data(json.loads(args.data_json) if args.data_json else None, str(args.spec))
    run_stage(spec, args.run_dir, args.work_dir, str(args.spec),
              peak_flops=args.peak_tflops * 1e12 if args.peak_tflops else None)


if __name__ == "__main__":
    main()
