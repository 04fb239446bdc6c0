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
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch.distributed as dist


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

    def resume(self) -> int:
        """Load the newest checkpoint if any; returns the optimizer step to continue from."""
        if not (self.directory / "latest").exists():
            return 0
        path, client = self.module.engine.load_checkpoint(str(self.directory), custom_load_fn=load_trainable)
        if path is None:
            raise RuntimeError(f"{self.directory}: 'latest' names a checkpoint that could not be loaded")
        self.stream.load_state_dict(client["data"])
        if client["step"] != self.module.step:
            raise RuntimeError(f"{path}: client step {client['step']} != engine step {self.module.step}")
        return self.module.step

    def save(self, step: int) -> None:
        self.module.engine.save_checkpoint(str(self.directory), tag=tag_of(step),
                                           client_state={"data": self.stream.state_dict(), "step": step},
                                           exclude_frozen_parameters=True)
        if not dist.is_initialized() or dist.get_rank() == 0:
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
