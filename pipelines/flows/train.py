"""The training flow: stages in order (Stage 1 -> 1.5 -> 2, optionally DPO), each from its predecessor's export.

    mavors flow run train                          # the demo stages under <work_dir>/train/demo
    mavors flow run train --params train.yaml      # stages: [stage1, stage1_5, stage2], launch: {hostfile: ...}

Each stage is one task that launches the trainer and waits: a ``python -m trainers.stage``
subprocess on the embedded default (one process; DeepSpeed never lives in the flow process,
so a crashed stage cannot take the flow's state with it), or the ``deepspeed`` launcher over
a hostfile on a cluster. A stage whose export exists is skipped by the trainer's chain, and a
killed stage resumes from its last DeepSpeed checkpoint. The trainer never opens the catalog;
the flow records each stage after it finished (single writer).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from pydantic import Field

from core.faults import fault_point
from core.config import ConfigPath
from core.paths import MANIFESTS
from core.processes import run_logged
from pipelines.flows.common import FlowParams, RunContext, publish_table, recorded_run, step, write_run_report
from trainers.launch import Launch

STAGE_EXPORTED = "mavors.stage.exported"
"""Event this flow emits when a stage writes its export (resource id ``mavors.stage.<name>``, the export
path as ``mavors.export``); the dpo-regeneration deployment's trigger listens for its Stage-2 spec."""


class TrainParams(FlowParams):
    """Which stages, where they write, how they are launched."""

    stages: list[str] = Field(default_factory=lambda: ["demo-stage1", "demo-stage1_5", "demo-stage2"])
    """Stage spec names in ``stages_dir``, in training order. Cluster: ``[stage1, stage1_5, stage2, dpo]``."""
    stages_dir: ConfigPath = MANIFESTS / "stages"
    """Folder of the stage specs (``<name>.yaml``)."""
    data: dict[str, Path] = {}
    """Stage name -> shard folder that replaces the spec's ``data`` (as ``mavors train --data``): the folders the
    curate flow built (``end_to_end`` passes them), the DPO pair set ``dpo_regenerate`` just built for
    ``demo-dpo``. Default: none; a stage whose spec names a mixture stage trains on the folder the catalog's
    ``shards`` table records for it, any other on its spec's data."""
    run_name: str = "demo"
    """Run folder under ``<work_dir>/train`` (as ``mavors train --run``): exports, DeepSpeed checkpoints,
    metrics, logs."""
    launch: Launch = Field(default_factory=Launch)
    """How each stage is started (:class:`trainers.launch.Launch`, the fields of ``mavors train``'s launch
    options). Default: one ``python -m trainers.stage`` subprocess here. Cluster: ``{hostfile: ..., ssh: true,
    master_addr: <hostfile's first host>}`` (infra/prefect/prefect.yaml)."""
    evaluate: bool = True
    """After each stage, evaluate its export on the catalog's held-out sets (lmms-eval tasks + held-out loss)
    into the ``evals`` table; skipped with a warning when the catalog has no held-out set."""


def _subprocess_stage(log_dir: Path, data: dict[str, dict]):
    """``run_one`` for the trainer's chain: the stage in a child process (``python -m trainers.stage``),
    given its data override (``data``: stage name -> replacement ``data`` section) like the launcher's ranks."""
    import sys

    from trainers.chain import data_args
    from trainers.metrics import followed_steps
    from trainers.stage import stage_paths

    def run_one(spec: Any, run_dir: Path, work_dir: Path, source: str) -> None:
        cmd = [sys.executable, "-m", "trainers.stage", "--spec", str(Path(source).resolve()),
               "--run-dir", str(Path(run_dir).resolve()), "--work-dir", str(Path(work_dir).resolve()),
               *data_args(data, spec.name)]
        with followed_steps(spec.name, stage_paths(run_dir, spec.name).metrics, spec.total_steps()) as poll:
            run_logged(cmd, log_dir / spec.name / "trainer.log", what="trainer", poll=poll)
    return run_one


# -- steps ------------------------------------------------------------------------------------------------
@step("plan-stages", retries=0)
def plan_stages(run: RunContext, stages: list[str], stage_files: list[Path], run_dir: Path, launch: Launch,
                data: dict[str, dict]) -> list[str]:
    """trainers.chain.plan_chain: every spec loaded and checked before anything trains."""
    from trainers.chain import plan_chain

    return [s.name for s in plan_chain(stages, stage_files[0].parent, run_dir, run.settings.work_dir, launch, data)]


@step("train-stage", retries=1, backoff_s=10.0)
def train_stage(run: RunContext, stage: str, spec_file: Path, data_index: list[Path], run_dir: Path,
                launch: Launch, previous: dict[str, Any] | None, data: dict[str, dict]) -> dict[str, Any]:
    """trainers.chain.run_chain for one stage: launch, wait (skipped when exported); then
    trainers.records.record_stage, with the catalog opened only once the trainer has exited."""
    from trainers.chain import run_chain
    from trainers.records import record_stage

    with fault_point(f"train-{stage}"):
        [record] = run_chain([stage], spec_file.parent, run_dir, run.settings.work_dir, launch,
                             run_one=_subprocess_stage(run_dir, data), data_overrides=data)
    with run.catalog() as cat:
        record_stage(cat, str(run_dir), record, run.run_id)
    _emit_exported(stage, record)
    return {k: record.get(k) for k in ("stage", "status", "steps", "samples", "final_loss", "resumed_from_step",
                                       "export", "world_size", "spec_digest", "fingerprints", "init_fingerprints")}


@step("evaluate-stage", retries=1)
def evaluate_stage(run: RunContext, stage: str, export: str, fingerprints: Any) -> list[dict[str, Any]]:
    """evaluation.stage_eval: held-out tasks and loss of the stage's export, in a child process
    (its floats do not depend on what ran before in the flow's process), rows recorded by the flow
    (``fingerprints`` of the export's weights key the cache, so a retrained stage is evaluated again)."""
    from curation.heldout import export_heldout
    from evaluation.stage_eval import evaluate_in_subprocess, record_evals

    with run.catalog() as cat:
        if not cat.scalar("SELECT count(*) FROM heldout"):
            get_run_logger().warning("no held-out set in %s (mavors eval split): stage %s not evaluated",
                                     run.settings.catalog, stage)
            return []
        export_heldout(cat, run.dir("eval"))
    rows = evaluate_in_subprocess(export, run.dir("eval"), run.dir("eval") / "logs" / f"{stage}.log")
    with run.catalog() as cat:
        record_evals(cat, rows, stage, export, run.run_id)
    return [{"stage": stage, **r} for r in rows]


def _emit_exported(stage: str, record: dict[str, Any]) -> None:
    """Tell Prefect's event system a stage export exists (the DPO deployment's trigger listens)."""
    from prefect.events import emit_event

    emit_event(event=STAGE_EXPORTED, resource={"prefect.resource.id": f"mavors.stage.{stage}",
                                               "mavors.export": str(record.get("export"))},
               payload={"status": record.get("status"), "steps": record.get("steps")})


# -- the flow ------------------------------------------------------------------------------------------------
@flow(name="train", log_prints=True)
def train(params: TrainParams = TrainParams()) -> dict[str, Any]:
    """Train the stages in order; each starts from its predecessor's export; finished stages are skipped."""
    with recorded_run("train", params) as run:
        records = train_stages(run, params)
        report = write_run_report(run, run.run_id, records) if params.report else None
    return {"run_id": run.run_id, "stages": records, "report": report}


def stage_data(run: RunContext, params: TrainParams) -> dict[str, dict]:
    """Stage name -> the ``data`` its ranks get: the folder ``params.data`` names, else, for a spec that trains
    on a mixture stage, the folder the catalog's ``shards`` table records for it (trainers.chain.mixture_data)."""
    from curation.shards.build import recorded_stage_dirs
    from trainers.chain import mixture_data

    given = {name: {"shards": str(path)} for name, path in params.data.items()}
    with run.catalog() as cat:
        built = recorded_stage_dirs(cat)
    return mixture_data(params.stages, params.stages_dir, built, run.settings.work_dir, given)


def train_stages(run: RunContext, params: TrainParams) -> list[dict[str, Any]]:
    """The stage tasks of ``params`` in order (also used by the end-to-end flow inside its own run)."""
    from trainers.batches import data_dirs
    from trainers.spec import load_stage

    run_dir = run.dir("train") / params.run_name
    files = [params.stages_dir / f"{name}.yaml" for name in params.stages]
    data = stage_data(run, params)
    plan_stages(run, params.stages, files, run_dir, params.launch, data)
    records, previous, evals = [], None, []
    for name, spec_file in zip(params.stages, files):
        shards = data_dirs(load_stage(spec_file).with_data(data.get(name), str(spec_file)), run.settings.work_dir)
        index = sorted(p for folder in shards for p in folder.rglob("index.json"))
        previous = train_stage.with_options(task_run_name=f"train-{name}")(
            run, name, spec_file, index, run_dir, params.launch, previous, {name: data[name]} if name in data else {})
        loss = previous["final_loss"]
        get_run_logger().info("stage %s: %s, %s steps, final loss %s", name, previous["status"],
                              previous["steps"], "-" if loss is None else f"{loss:.4g}")
        records.append(previous)
        if params.evaluate:
            evals += evaluate_stage.with_options(task_run_name=f"evaluate-{name}")(
                run, name, previous["export"], previous["fingerprints"])
    if evals:
        publish_table(run, "evals", "Held-out evaluation per stage", evals)
    publish_table(run, "stages", "Training stages", [
        {"stage": r["stage"], "status": r["status"], "steps": r["steps"], "samples": r["samples"],
         "final loss": r["final_loss"], "resumed from step": r["resumed_from_step"], "export": r["export"]}
        for r in records])
    return records
