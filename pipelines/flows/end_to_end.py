"""The whole pipeline: curate -> Stages 1, 1.5, 2 -> DPO pairs from the Stage-2 export -> DPO stage.

    mavors demo                         # demo corpus + tiny models + this flow under ./mavors-work
    mavors flow run end-to-end          # this flow on whatever the parameters name

Each part is a subflow (its own ``runs`` row and artifacts). A rerun after a crash resumes
at the step that was interrupted: finished steps hit Prefect's cache, and the library skips
work the catalog and the file system record as done (which is what correctness rests on).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from pydantic import Field

from core import progress
from core.config import work_dir_path
from pipelines.flows.common import FlowParams, publish_table, recorded_run, write_run_report
from pipelines.flows.curate import CurateParams, curate
from pipelines.flows.dpo_regenerate import DpoParams, dpo_regenerate
from pipelines.flows.train import TrainParams, train


class EndToEndParams(FlowParams):
    """The parameters of the three parts; ``config``, ``work_dir``, ``use_ray`` and ``use_cache`` apply to all."""

    curate: CurateParams = Field(default_factory=CurateParams)
    """Curation (sources, captioners, scorer, dedup policy, mixtures)."""
    train: TrainParams = Field(default_factory=TrainParams)
    """Supervised stages (1, 1.5, 2), in order."""
    dpo: DpoParams = Field(default_factory=DpoParams)
    """DPO pair building; its checkpoint is the last supervised stage's export unless given."""
    dpo_stages: list[str] = Field(default_factory=lambda: ["demo-dpo"])
    """Stage specs trained on the pairs after they are built (the paper's Stage 3), each with its ``data``
    replaced by the pair set's shards. Cluster: ``[dpo]``."""

    def part(self, params: FlowParams) -> Any:
        """A part's parameters with the shared ones applied."""
        return params.model_copy(update={"config": self.config, "work_dir": self.work_dir, "report": False,
                                         "use_ray": self.use_ray, "use_cache": self.use_cache})


@flow(name="end_to_end", log_prints=True)
def end_to_end(params: EndToEndParams = EndToEndParams()) -> dict[str, Any]:
    """curate -> train (1, 1.5, 2) -> dpo_regenerate (policy: the Stage-2 export) -> train (DPO)."""
    with recorded_run("end_to_end", params) as run:
        curated = curate(params.part(params.curate))
        supervised = train(on_curated(params.part(params.train), curated["shard_dirs"]))
        stage2 = supervised["stages"][-1]
        dpo = params.part(params.dpo)
        if dpo.checkpoint is None:
            dpo = dpo.model_copy(update={"checkpoint": Path(stage2["export"])})
        pairs = dpo_regenerate(dpo)
        if not pairs.get("shard_dir"):
            raise RuntimeError(f"DPO pair set {pairs['pair_set_id']} has no pairs ({pairs['counts']}): "
                               f"nothing to train {params.dpo_stages} on")
        # As {work_dir}/..., as mixture_data gives the supervised stages theirs: the DPO spec's digest, which its
        # export is checked against on a rerun, then holds no absolute path of the work folder.
        shards = Path(work_dir_path(pairs["shard_dir"], run.settings.work_dir))
        on_pairs = {name: shards for name in params.dpo_stages}
        preference = train(params.part(params.train).model_copy(update={"stages": params.dpo_stages,
                                                                         "data": on_pairs}))
        stages = supervised["stages"] + preference["stages"]
        publish_table(run, "stages", "Training stages (loss per stage)", [
            {"stage": s["stage"], "status": s["status"], "steps": s["steps"], "final loss": s["final_loss"]}
            for s in stages])
        report = write_run_report(run, run.run_id, stages) if params.report else None
    return {"run_id": run.run_id, "curate": curated, "stages": stages, "dpo": pairs,
            "locations": {"catalog": str(run.settings.catalog), "shards": str(run.settings.work_dir / "shards"),
                          "dpo pairs": pairs.get("shard_dir"),
                          "checkpoints": str(run.settings.work_dir / "train" / params.train.run_name),
                          "report": report}}


def on_curated(params: TrainParams, shard_dirs: dict[str, dict[str, str]]) -> TrainParams:
    """The supervised stages handed the folders the curate flow built for the mixture stages their specs name
    (trainers.chain.mixture_data); folders given in ``params.data`` win."""
    from trainers.chain import mixture_data

    given = {name: {"shards": str(path)} for name, path in params.data.items()}
    data = mixture_data(params.stages, params.stages_dir, shard_dirs, params.settings().work_dir, given)
    return params.model_copy(update={"data": {name: Path(d["shards"]) for name, d in data.items()}})


def demo(work_dir: Path, seed: int = 0, use_ray: bool = False) -> dict[str, Any]:
    """``mavors demo``: demo corpus (``mavors demo-data``) + tiny models (``mavors models make-tiny``) +
    :func:`end_to_end` with its embedded defaults; returns its summary with the tables the command prints.
    Every step, these two included, reports its wall time as it finishes (:mod:`core.progress`)."""
    from demo.corpus import generate
    from demo.tiny_models import make_tiny

    corpus = work_dir / "demo"
    with progress.task("demo-data"):
        if not (corpus / "corpus.json").exists():
            generate(corpus, seed=seed)
    with progress.task("make-tiny"):
        if not (work_dir / "models" / "mavors").exists():
            make_tiny(work_dir / "models", seed=seed)
    summary = end_to_end(EndToEndParams(work_dir=work_dir, use_ray=use_ray))
    curated = summary["curate"]
    summary["tables"] = {
        "Ingest per source": curated["ingest"],
        "Shards per stage": [{k: r[k] for k in ("mixture", "stage", "shards", "samples")} for r in curated["shards"]],
        "Training stages": [{"stage": s["stage"], "steps": s["steps"], "final loss": s["final_loss"],
                             "export": s["export"]} for s in summary["stages"]],
        "DPO pairs": [{"domain": d, "reason": r, "inputs": n} for d, reasons in sorted(summary["dpo"]["counts"].items())
                      for r, n in sorted(reasons.items())],
    }
    return summary
