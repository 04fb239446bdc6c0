"""Run stages in order, each from its predecessor's export, skipping stages already exported.

    records = run_chain(["demo-stage1", "demo-stage1_5", "demo-stage2", "demo-dpo"],
                        stages_dir=Path("manifests/stages"), run_dir=Path("mavors-work/train/demo"))

Every spec is loaded and checked before the first step of the first stage: the
world size divides each batch, every ``init.from_stage`` runs earlier in the chain
or has a finished export, base checkpoints exist. A stage whose export exists was
finished by an earlier run and is skipped, unless it was trained from a different
spec (then the chain stops: the run dir belongs to other settings).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping
from typing import Callable

from core.config import ConfigError, work_dir_path
from core.paths import REPO_ROOT
from core.processes import run_logged
from trainers.export import is_exported, read_stage_record
from trainers.batches import data_dirs
from trainers.initialization import check_init, export_dir
from trainers.launch import Launch, deepspeed_command, world_size
from trainers.spec import StageSpec, check_world_size, load_stage


@dataclass(frozen=True)
class PlannedStage:
    path: Path
    spec: StageSpec

    @property
    def name(self) -> str:
        return self.spec.name


def manifest_path(path: str | Path) -> Path:
    """A manifest path as given (absolute, or relative to the current dir), else relative to the repository."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return REPO_ROOT / p


def stage_file(stages_dir: Path, name: str) -> Path:
    """``<stages_dir>/<name>.yaml`` (a relative dir is looked up in the current dir, then the repository)."""
    stages_dir = manifest_path(str(stages_dir))
    path = stages_dir / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(stages_dir).glob("*.yaml"))
        raise ConfigError(f"{path}: no such stage spec; known stages: {', '.join(known)}")
    return path


def mixture_data(names: list[str], stages_dir: Path, shard_dirs: Mapping[str, Mapping[str, str | Path]],
                 work_dir: Path, given: Mapping[str, dict] | None = None) -> dict[str, dict]:
    """The chain's data overrides: ``given`` (``--data STAGE=DIR``), plus ``{"shards": folder}`` for every other
    stage of ``names`` whose spec trains on a mixture stage.

    ``shard_dirs``: mixture name -> mixture stage -> the folder its shards were built into, as
    the curate flow returns it or the catalog records it
    (:func:`curation.shards.build.recorded_stage_dirs`). This is what a spec's ``data.mixture``
    and ``mixture_stage`` mean: the driver resolves them here once and hands the ranks the folder.
    A folder inside ``work_dir`` is given as ``{work_dir}/...`` (:func:`core.config.work_dir_path`), so the
    resolved spec, and the digest an export is checked against, stay the same when the work dir moves.
    """
    from curation.mixtures import load_mixture

    overrides = dict(given or {})
    for name in names:
        if name in overrides:
            continue
        path = stage_file(stages_dir, name)
        spec = load_stage(path)
        data = spec.data
        if data.mixture is None:
            continue
        mixture = load_mixture(spec.path(data.mixture, work_dir)).name
        folder = shard_dirs.get(mixture, {}).get(data.mixture_stage)
        if folder is None:
            raise ConfigError(f"{path}: field 'data.mixture': no shards built for mixture {mixture!r} stage "
                              f"{data.mixture_stage!r}; build them first (mavors shards build {data.mixture}, "
                              "or the curate flow)")
        overrides[name] = {"shards": work_dir_path(folder, work_dir)}
    return overrides


def check_data(spec: StageSpec, work_dir: Path, source: str) -> None:
    """Shard data must be folders (``data.mixture`` resolved by :func:`mixture_data`) holding an index."""
    if spec.data.mixture is not None:
        raise ConfigError(f"{source}: field 'data.mixture': not resolved to the folder its shards were built into; "
                          "the driver passes it (trainers.chain.mixture_data), or give --data STAGE=SHARD_DIR "
                          "after mavors shards build")
    field = "data.blend" if spec.data.blend is not None else "data.shards"
    for directory in data_dirs(spec, work_dir):
        if not any(Path(directory).rglob("index.json")):
            raise ConfigError(f"{source}: field '{field}': no shards (index.json) under {directory}; "
                              "build them first (mavors shards build ...)")


def plan_chain(names: list[str], stages_dir: Path, run_dir: Path, work_dir: Path, launch: Launch,
               data_overrides: dict[str, dict] | None = None) -> list[PlannedStage]:
    """Load and check every stage before anything trains (errors name file and field).

    ``data_overrides``: stage name -> replacement ``data`` section (e.g. ``{"shards": "dpo/<set>/shards"}``).
    """
    world = world_size(launch)
    planned, earlier = [], []
    data_overrides = data_overrides or {}
    unknown = sorted(set(data_overrides) - set(names))
    if unknown:
        raise ConfigError(f"data overrides for stages not in the chain: {unknown}")
    for name in names:
        path = stage_file(stages_dir, name)
        spec = load_stage(path).with_data(data_overrides.get(name), str(path))
        check_world_size(spec, world, str(path))
        check_init(spec, run_dir, work_dir, str(path), tuple(earlier))
        check_data(spec, work_dir, str(path))
        finished = export_dir(run_dir, spec.name)
        if is_exported(finished) and read_stage_record(finished).get("spec_digest") != spec.digest():
            raise ConfigError(f"{path}: stage {spec.name!r} in {run_dir} was exported from a different spec; "
                              "use a new run dir or remove that export")
        planned.append(PlannedStage(path, spec))
        earlier.append(spec.name)
    return planned


def data_args(data_overrides: dict[str, dict], name: str) -> tuple[str, ...]:
    """``trainers.stage`` arguments carrying a stage's data override to the launched ranks."""
    return ("--data-json", json.dumps(data_overrides[name])) if name in data_overrides else ()


def run_chain(names: list[str], stages_dir: Path, run_dir: Path, work_dir: Path = Path("."),
              launch: Launch = Launch(), on_stage: Callable[[str, dict], None] | None = None,
              run_one: Callable | None = None, data_overrides: dict[str, dict] | None = None) -> list[dict]:
    """Train ``names`` in order; returns each stage's record (``status`` trained or skipped).

    ``on_stage(status, record)`` is called after each stage (the CLI records it in the catalog).
    ``run_one(spec, run_dir, work_dir, source)`` trains one stage in this process (default ``run_stage``).
    ``data_overrides``: see :func:`plan_chain`.
    """
    from trainers.metrics import followed_steps
    from trainers.stage import run_stage, stage_paths

    run_one = run_one or run_stage
    records = []
    for stage in plan_chain(names, stages_dir, run_dir, work_dir, launch, data_overrides):
        out = export_dir(run_dir, stage.name)
        if is_exported(out):
            record = {**read_stage_record(out), "status": "skipped"}
        else:
            if launch.in_process:
                run_one(stage.spec, run_dir, work_dir, str(stage.path))
            else:
                cmd = deepspeed_command(stage.path, run_dir, work_dir, launch,
                                        data_args(data_overrides or {}, stage.name))
                metrics = stage_paths(run_dir, stage.name).metrics
                with followed_steps(stage.name, metrics, stage.spec.total_steps()) as poll:
                    run_logged(cmd, Path(run_dir) / stage.name / "launcher.log", what="launcher", poll=poll)
            if not is_exported(out):
                raise RuntimeError(f"stage {stage.name} finished without an export at {out}")
            record = {**read_stage_record(out), "status": "trained"}
        record["export"] = str(out)
        records.append(record)
        if on_stage is not None:
            on_stage(record["status"], record)
    return records
