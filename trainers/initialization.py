"""A stage's starting weights: base components (SigLIP + Qwen2.5), a previous stage's export, or a checkpoint.

    model, processor = load_start(spec, run_dir, work_dir, source="manifests/stages/stage2.yaml")

:func:`check_init` runs before anything starts (chain start-up), so a stage whose
predecessor has no export fails naming the spec file and ``init.from_stage``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from core.config import ConfigError
from trainers.export import is_exported
from trainers.spec import StageSpec


def export_dir(run_dir: Path, stage_name: str) -> Path:
    """Where stage ``stage_name`` of a run exports (``<run dir>/<name>/export``)."""
    return Path(run_dir) / stage_name / "export"


def check_init(spec: StageSpec, run_dir: Path, work_dir: Path, source: str,
               earlier_in_chain: tuple[str, ...] = ()) -> None:
    """Fail with file and field when the starting weights cannot exist when the stage starts."""
    init = spec.init
    if init.from_stage is not None:
        if init.from_stage in earlier_in_chain:
            return
        path = export_dir(run_dir, init.from_stage)
        if not is_exported(path):
            raise ConfigError(f"{source}: field 'init.from_stage': stage {init.from_stage!r} has no finished "
                              f"export at {path} and does not run earlier in this chain")
    elif init.pretrained is not None:
        path = spec.path(init.pretrained, work_dir)
        if not (path / "config.json").is_file():
            raise ConfigError(f"{source}: field 'init.pretrained': no checkpoint (config.json) at {path}")
    else:
        for key, value in init.components.items():
            path = spec.path(value, work_dir)
            if not (path / "config.json").is_file():
                raise ConfigError(f"{source}: field 'init.components.{key}': no checkpoint (config.json) at {path}")


def load_start(spec: StageSpec, run_dir: Path, work_dir: Path, source: str = "spec"):
    """(model in float32 on CPU, processor) for the stage's ``init``."""
    from model import MavorsForConditionalGeneration, MavorsProcessor

    check_init(spec, run_dir, work_dir, source)
    init = spec.init
    if init.components is not None:
        from model.conversion import build_with_processor

        vision, llm = spec.path(init.components["vision"], work_dir), spec.path(init.components["llm"], work_dir)
        return build_with_processor(vision, llm, **init.config_overrides)
    path = export_dir(run_dir, init.from_stage) if init.from_stage else spec.path(init.pretrained, work_dir)
    model = MavorsForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    return model, MavorsProcessor.from_pretrained(path)
