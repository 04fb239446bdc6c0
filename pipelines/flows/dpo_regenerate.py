"""DPO regeneration: newest Stage-2 export -> preference pairs in three domains -> shards (paper §4 Stage 3).

    mavors flow run dpo                          # newest stage2 export under <work_dir>/train
    mavors flow run dpo --params dpo.yaml        # checkpoint: /path/to/export, mixture: ..., pair_config: ...

Scheduled by the ``dpo-regeneration`` deployment (cron, and on the ``mavors.stage.exported``
event for ``stage2`` that the train flow emits). A pair set is named by the checkpoint's
content: rerunning on the same export decides nothing again; a new export builds a new set
beside the old one (lineage in ``dpo_pair_sets``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from core.config import ConfigPath
from core.paths import MANIFESTS
from pipelines.flows.common import FlowParams, RunContext, publish_table, recorded_run, step, write_run_report



class DpoParams(FlowParams):
    """Which policy checkpoint, which inputs, which pair-building config."""

    checkpoint: ConfigPath | None = None
    """Policy checkpoint (a Mavors export or a local VLM). None: the newest export of ``stage`` under
    ``<work_dir>/train``."""
    stage: str = "demo-stage2"
    """Stage (spec name) whose newest export is the policy when ``checkpoint`` is None. Cluster: ``stage2``."""
    mixture: ConfigPath = MANIFESTS / "mixtures" / "demo-dpo.yaml"
    """Mixture whose ``dpo`` stage lists the inputs (QA, image captions, video captions). Cluster: the paper's
    DPO mixture (LLaVA-Video QA, LLaVA-OneVision + DenseFusion captions, WebVid/Kinetics/OOPS videos)."""
    pair_config: ConfigPath | None = MANIFESTS / "dpo" / "demo.yaml"
    """:class:`curation.preference.config.DpoConfig` YAML (sampling, judge, margins per domain). The demo's
    suits a tiny random policy (stop strings, log-prob judge). Cluster: None, the config's own defaults
    (EOS-terminated generations, a judge model)."""


# -- steps ----------------------------------------------------------------------------------------------
@step("find-policy-export")
def find_policy_export(run: RunContext, stage: str, explicit: Path | None, exports: list[Any]) -> str:
    """The explicit checkpoint, else the finished export of ``stage`` whose ``stage.json`` (trainers.export)
    records the latest end time."""
    if explicit is not None:
        if not explicit.exists():
            raise FileNotFoundError(f"checkpoint {explicit} does not exist")
        return str(explicit)
    from trainers.export import read_stage_record

    if not exports:
        raise FileNotFoundError(f"no finished {stage} export under {run.dir('train')}: train it first "
                                "(mavors flow run train) or pass checkpoint")
    newest = max(exports, key=lambda e: (read_stage_record(Path(e[0]).parent).get("ended_at") or 0, e[0]))
    return str(Path(newest[0]).parent)


@step("select-dpo-inputs")
def select_dpo_inputs(run: RunContext, mixture: Path) -> dict[str, Any]:
    """curation.mixtures.select_mixture: draw the ``dpo`` stage inputs (reused when unchanged)."""
    from curation.mixtures import load_mixture, select_mixture

    config = load_mixture(mixture)
    if "dpo" not in config.stages:
        raise ValueError(f"{mixture}: the mixture has no `dpo` stage to take inputs from")
    with run.catalog() as cat:
        selection = select_mixture(cat, config, manifest_path=mixture, run_id=run.run_id)
    return {"mixture": selection.mixture, "selected": selection.n_selected,
            "entries": [{"source": e.source, "requested": e.requested, "available": e.available,
                         "selected": e.selected, "status": e.status} for e in selection.entries]}


@step("build-pairs", retries=1)
def build_pairs(run: RunContext, checkpoint: str, mixture: Path, config: Path | None,
                selection: dict[str, Any]) -> dict[str, Any]:
    """curation.preference.build.build_pair_set: generate, judge, decide and shard the pairs."""
    from core.config import load_yaml
    from curation.preference.build import build_pair_set, mixture_inputs
    from curation.preference.config import DpoConfig

    cfg = load_yaml(config, DpoConfig, run.settings.work_dir) if config else DpoConfig()
    with run.catalog() as cat:
        ids, mixture_sha = mixture_inputs(cat, selection["mixture"])
        report = build_pair_set(cat, checkpoint, ids, cfg, out_dir=cfg.output_dir or run.dir("dpo"),
                                mixture=selection["mixture"], mixture_sha256=mixture_sha, run_id=run.run_id)
        shard_dir = cat.scalar("SELECT shard_dir FROM dpo_pair_sets WHERE pair_set_id = ?",
                               [report.pair_set_id]) if report.shards else None
    return {"pair_set_id": report.pair_set_id, "checkpoint_sha256": report.checkpoint_sha256,
            "backend": report.backend, "decided": report.decided, "skipped": report.skipped,
            "counts": report.counts, "shards": report.shards,
            "shard_dir": str(cat.resolved(shard_dir)) if shard_dir else None}


# -- the flow ---------------------------------------------------------------------------------------------
@flow(name="dpo_regenerate", log_prints=True)
def dpo_regenerate(params: DpoParams = DpoParams()) -> dict[str, Any]:
    """Newest Stage-2 export -> DPO pairs (QA, image captions, video captions) -> shards."""
    with recorded_run("dpo_regenerate", params) as run:
        checkpoint = find_policy_export(run, params.stage, params.checkpoint, _export_listing(run, params.stage))
        get_run_logger().info("policy checkpoint: %s", checkpoint)
        selection = select_dpo_inputs(run, params.mixture)
        built = build_pairs(run, checkpoint, params.mixture, params.pair_config, selection)
        rows = [{"domain": d, "reason": r, "inputs": n} for d, reasons in sorted(built["counts"].items())
                for r, n in sorted(reasons.items())]
        publish_table(run, "pairs", f"DPO pair set {built['pair_set_id']} (policy {checkpoint})", rows,
                      note=f"{built['decided']} inputs decided now, {built['skipped']} already decided; "
                           f"{len(built['shards'])} shard(s) under {built['shard_dir']}")
        report = write_run_report(run, run.run_id, built) if params.report else None
    return {"run_id": run.run_id, "report": report, "checkpoint": checkpoint, "selection": selection, **built}


def _export_listing(run: RunContext, stage: str) -> list[Any]:
    """(path, mtime) of the stage's export records: part of the cache key of the export lookup, so a new
    export is found even though the step's other inputs did not change."""
    root = run.dir("train")
    return sorted([str(p), p.stat().st_mtime_ns] for p in root.glob(f"**/{stage}/export/stage.json"))
