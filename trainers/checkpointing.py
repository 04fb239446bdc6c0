"""DeepSpeed checkpoints every N optimizer steps, resume from the newest one, keep the last K.

    ckpt = Checkpointer(run_dir / "checkpoints", module, stream)
    start = ckpt.resume()        # 0, or the step of the newest complete checkpoint

A checkpoint holds the model's trainable parameters (frozen ones never change from the stage's start weights, which
resume loads again; leaving them out keeps a Stage-1 checkpoint of a 965M model at its 48M trainable parameters
instead of a 3.9 GB copy that loading held beside the model), ZeRO optimizer partitions, the LR scheduler, the
engine's step counter and (client state) the data stream's position, so a run killed
at any point and restarted continues with exactly the batches and losses an
uninterrupted run would have produced. DeepSpeed writes the ``latest`` tag file only
after all shards are saved, so a kill during saving resumes from the previous tag.

Another world size: ZeRO-1/2 optimizer partitions are per rank, and DeepSpeed refuses to load them on a
different number of ranks (its elastic layout is refused too, and its universal converter reads only the
rigid one). So each tag records the world size it was saved by (``mavors.json``); a run that finds the newest
tag saved by another one has rank 0 convert it once with DeepSpeed's own ``ds_to_universal`` into
``<tag>_universal`` (written beside, renamed when complete) and every rank loads that with
``checkpoint.load_universal``. The data stream's state is a global position, so it continues as it is.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch.distributed as dist

from core.processes import run_logged

SAVED_BY = "mavors.json"
"""Per tag: ``{"world_size", "step"}`` of the run that saved it."""


def tag_of(step: int) -> str:
    return f"step_{step:09d}"


def load_trainable(src: dict, dst) -> None:
    """Load a checkpoint's module state (trainable parameters and buffers) into ``dst``; any other missing or
    unexpected key is an error, as in a strict load."""
    result = dst.load_state_dict(src, strict=False)
    frozen = {n for n, p in dst.named_parameters() if not p.requires_grad}
    missing = set(result.missing_keys) - frozen
    if missing or result.unexpected_keys:
        raise RuntimeError(f"checkpoint does not match the model: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(result.unexpected_keys)[:5]}")


class Checkpointer:
    """Loop callback and resume helper for DeepSpeed checkpoints under ``directory``."""

    def __init__(self, directory: Path, module, stream):
        self.directory, self.module, self.stream = Path(directory), module, stream

    def resume(self, tag: str | None = None) -> int:
        """Load the newest checkpoint (or ``tag``: :func:`universal_tag`) if any; returns the step to continue from."""
        if not (self.directory / "latest").exists():
            return 0
        path, client = self.module.engine.load_checkpoint(str(self.directory), tag=tag, custom_load_fn=load_trainable)
        if path is None:
            raise RuntimeError(f"{self.directory}: 'latest' names a checkpoint that could not be loaded")
        self.stream.load_state_dict(client["data"])
        if client["step"] != self.module.step:
            raise RuntimeError(f"{path}: client step {client['step']} != engine step {self.module.step}")
        return self.module.step

    def save(self, step: int) -> None:
        # universal_checkpoint_info: what ds_to_universal requires (Megatron's partitioning hints; none here)
        self.module.engine.save_checkpoint(str(self.directory), tag=tag_of(step),
                                           client_state={"data": self.stream.state_dict(), "step": step,
                                                         "universal_checkpoint_info": {}},
                                           exclude_frozen_parameters=True)
        if not dist.is_initialized() or dist.get_rank() == 0:
            world = dist.get_world_size() if dist.is_initialized() else 1
            (self.directory / tag_of(step) / SAVED_BY).write_text(json.dumps({"world_size": world, "step": step}))
            self._prune()

    def _prune(self) -> None:
        tags = sorted(p for p in self.directory.glob("step_*") if p.is_dir())
        for old in tags[:-self.module.spec.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def on_start(self, step: int) -> None:
        pass

    def on_step(self, step: int, stats: dict) -> None:
        if step % self.module.spec.checkpoint_every == 0:
            self.save(step)

    def on_end(self, step: int) -> None:
        pass  # the stage's export is its final artefact


def universal_tag(directory: Path, world_size: int) -> str | None:
    """When the newest checkpoint under ``directory`` was saved by another world size: its universal copy's tag
    (converted here by rank 0 if not there yet; all ranks call this); else None (load it as it is)."""
    latest = Path(directory) / "latest"
    if not latest.exists():
        return None
    tag = latest.read_text().strip()
    record = Path(directory) / tag / SAVED_BY
    saved = json.loads(record.read_text())["world_size"] if record.exists() else world_size  # older tags: as is
    if saved == world_size:
        return None
    out = Path(directory) / f"{tag}_universal"
    if (not dist.is_initialized() or dist.get_rank() == 0) and not out.exists():
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        run_logged([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                    str(Path(directory) / tag), "--output_folder", str(partial), "--num_extract_workers", "1",
                    "--num_merge_workers", "1"], Path(directory) / f"{tag}_universal.log",
                   what=f"ds_to_universal ({tag}: {saved} ranks -> {world_size})")
        partial.rename(out)
    if dist.is_initialized():
        dist.barrier()
    return out.name
