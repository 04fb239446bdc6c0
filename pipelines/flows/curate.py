"""The curation flow: ingest -> caption synthesis + merge -> perplexity -> dedup -> mixtures -> shards.

    mavors flow run curate                       # embedded default: the demo corpus under ./mavors-work
    mavors flow run curate --params curate.yaml  # see `mavors flow params curate`

Each step is one library call (see the ``step`` functions below); every library step skips
work the catalog records as finished, so a rerun after a crash resumes where it stopped.
"""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from pydantic import Field

from core.config import ConfigPath
from core.paths import MANIFESTS
from pipelines.flows.common import (FlowParams, RunContext, publish_table, recorded_run, step,
                                    write_run_report)



class CurateParams(FlowParams):
    """What to curate; defaults curate the demo corpus with the tiny models (``mavors demo``)."""

    sources: list[str] = Field(default_factory=lambda: ["{work_dir}/demo/manifests/*.yaml"])
    """Source manifest paths or globs (``{work_dir}`` expands). Cluster: ``manifests/sources/<dataset>.yaml`` ..."""
    captioners: ConfigPath | None = MANIFESTS / "captioners" / "demo.yaml"
    """Caption-synthesis roster (captioners, merger, which sources need captions). None skips the step.
    Cluster: ``manifests/captioners/paper.yaml`` (Qwen2VL-72B, InternVL2.5-78B, Tarsier-34B; R1-Distill merger)."""
    scorer: ConfigPath = MANIFESTS / "dedup" / "scorers" / "tiny-qwen2vl.yaml"
    """Perplexity scorer (engine + text scope). Cluster: a Qwen2VL-72B vLLM scorer."""
    dedup_policy: ConfigPath = MANIFESTS / "dedup" / "demo.yaml"
    """Dedup policy (per task rule, seed). Cluster: ``manifests/dedup/paper.yaml``."""
    mixtures: list[ConfigPath] = Field(default_factory=lambda: [
        MANIFESTS / "mixtures" / f"demo-{stage}.yaml" for stage in ("stage1", "stage1_5", "stage2")])
    """Mixture manifests to select and shard, one per training stage (each lists its stages).
    Cluster: ``paper-table6.yaml``."""

    heldout_per_family: int | None = Field(4, ge=1)
    """Samples reserved per task family (image/video QA and captions) for evaluation, before any mixture
    is sampled; mixtures never draw them or their media. None skips the reservation. Cluster: ~500."""
    heldout_seed: int = 0
    """Seed of the held-out draw (the split is reserved once per catalog)."""

    def source_paths(self) -> list[Path]:
        """The manifests named by :attr:`sources`, globs expanded, sorted; an empty glob is an error."""
        work_dir = self.settings().work_dir
        found: list[Path] = []
        for pattern in self.sources:
            pattern = pattern.replace("{work_dir}", str(work_dir))
            matches = sorted(Path(p) for p in glob.glob(pattern))
            if not matches:
                raise FileNotFoundError(f"sources: {pattern!r} matches no manifest")
            found += matches
        return found


def source_state(manifest_paths: list[Path]) -> list[list[Any]]:
    """(path, size, mtime) of every file under each source's annotations and media folder.

    Part of the ingest step's cache key, so a new or changed file in a source re-runs ingest
    even when its manifest did not change (nightly curation of growing sources).
    """
    from curation.sources import load_manifests

    state = []
    for m in load_manifests(manifest_paths):
        roots = [*m.annotation_paths, m.media_dir]
        for root in roots:
            files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
            state += [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    return sorted(state)


# -- steps: one library call each ------------------------------------------------------------------
@step("ingest")
def ingest_sources(run: RunContext, manifests: list[Path], state: list[list[Any]]) -> list[dict[str, Any]]:
    """curation.ingest.ingest: annotations read, media hashed and probed on Ray, one transaction per source."""
    from curation.ingest import ingest
    from curation.sources import load_manifests

    with run.catalog() as cat:
        reports = ingest(load_manifests(manifests), cat, ray_settings=run.settings.ray,
                         workers=None if run.use_ray else 0, run_id=run.run_id)
    return [{"source": r.source, "items": r.items, "new": r.new, "replaced": r.replaced, "unchanged": r.unchanged,
             "new_media": r.new_media, "quarantined": sum(r.quarantined.values())} for r in reports]


@step("captions")
def synthesize_captions(run: RunContext, roster: Path, upstream: Any) -> dict[str, Any]:
    """curation.captions.run_captions: raw captions per captioner, quality gates, merge, caption samples."""
    from curation.captions import load_roster, run_captions

    with run.catalog() as cat:
        report = run_captions(cat, load_roster(roster, run.settings.work_dir), use_ray=run.use_ray, run_id=run.run_id,
                              ray_settings=run.settings.ray)
    return report.as_dict()


@step("score-perplexity")
def score_perplexity(run: RunContext, scorer: Path, upstream: Any) -> dict[str, int]:
    """curation.perplexity.run_scoring: PPL of every not-yet-scored sample, one transaction per batch."""
    from curation.perplexity import load_scorer_config, run_scoring

    with run.catalog() as cat:
        return run_scoring(cat, load_scorer_config(scorer, run.settings.work_dir), use_ray=run.use_ray,
                           run_id=run.run_id, ray_settings=run.settings.ray)


@step("dedup")
def dedup(run: RunContext, policy: Path, upstream: Any) -> dict[str, int]:
    """curation.dedup.run_policy: a decision for every sample, the policy's rows replaced atomically."""
    from curation.dedup import load_policy, run_policy

    with run.catalog() as cat:
        return run_policy(cat, load_policy(policy), run_id=run.run_id)


@step("dedup-report")
def dedup_report(run: RunContext, policy: Path, upstream: Any) -> dict[str, Any]:
    """curation.dedup.report: kept/dropped per source and task, PPL histogram (PNG) under reports/."""
    from curation.dedup import load_policy, report

    name = load_policy(policy).name
    with run.catalog() as cat:
        return report(cat, run.dir("reports") / "dedup" / name, policy=name)


@step("reserve-heldout")
def reserve_heldout(run: RunContext, per_family: int, seed: int, upstream: Any) -> dict[str, Any]:
    """curation.heldout: reserve the held-out sets (before mixtures) and export their task files."""
    from curation.heldout import export_heldout, reserve_heldout as reserve

    with run.catalog() as cat:
        split = reserve(cat, per_family=per_family, seed=seed)
        task_dir = export_heldout(cat, run.dir("eval"))
    return {"split": split.name, "created": split.created, "counts": split.counts, "tasks": str(task_dir)}


@step("check-leakage", retries=0)
def check_leakage(run: RunContext, shard_dirs: list[str]) -> int:
    """curation.leakage.check_no_leakage: no held-out id or media in any training shard."""
    from curation.leakage import check_no_leakage

    with run.catalog() as cat:
        return check_no_leakage(cat, shard_dirs)


@step("select-mixture")
def select_mixture(run: RunContext, mixture: Path, upstream: Any) -> list[dict[str, Any]]:
    """curation.mixtures.select_mixture: the draw, recorded in mixture_members (reused when unchanged)."""
    from curation.mixtures import load_mixture, select_mixture as select

    with run.catalog() as cat:
        selection = select(cat, load_mixture(mixture), manifest_path=mixture, run_id=run.run_id)
    return [{"mixture": selection.mixture, "stage": e.stage, "source": e.source, "requested": e.requested,
             "available": e.available, "selected": e.selected, "status": e.status} for e in selection.entries]


@step("shards")
def build_shards(run: RunContext, mixture: Path, upstream: Any) -> list[dict[str, Any]]:
    """curation.shards.build.build_shards: transcode, plan and write the mixture's shards on Ray (complete ones
    skipped); ``dir`` of each stage is the absolute folder its trainer is handed."""
    from curation.mixtures import load_mixture
    from curation.shards.build import build_shards as build

    config = load_mixture(mixture)
    with run.catalog() as cat:
        builds = build(cat, config, run.dir("shards"), parallel=run.use_ray, ray_settings=run.settings.ray,
                       run_id=run.run_id)
    return [{"mixture": config.name, "stage": b.stage, "shards": len(b.shards), "samples": b.n_samples,
             "written": len(b.written), "skipped": len(b.skipped), "removed": len(b.removed),
             "quarantined": sum(b.quarantined.values()), "dir": str(b.out_dir.resolve())} for b in builds]


@step("catalog-stats")
def catalog_stats(run: RunContext, upstream: Any) -> list[dict[str, Any]]:
    """pipelines.report.sections.catalog_stats: the ``mavors catalog stats`` tables (sources, media, duplicates,
    quarantine, DPO pairs)."""
    from pipelines.report.sections import catalog_stats as stats_tables

    with run.catalog() as cat:
        return stats_tables(cat)


# -- the flow -----------------------------------------------------------------------------------------
@flow(name="curate", log_prints=True)
def curate(params: CurateParams = CurateParams()) -> dict[str, Any]:
    """Ingest -> caption synthesis + merge -> perplexity -> dedup -> mixtures -> shards (paper App. A)."""
    logger = get_run_logger()
    with recorded_run("curate", params) as run:
        manifests = params.source_paths()
        ingested = ingest_sources(run, manifests, source_state(manifests))
        publish_table(run, "ingest", "Ingest per source", ingested)
        latest: Any = ingested
        if params.captioners is not None:
            latest = synthesize_captions(run, params.captioners, latest)
            publish_table(run, "captions", "Caption synthesis",
                          [{k: v for k, v in latest.items() if k != "stages"}],
                          note="Per Ray stage: " + ", ".join(f"{k}: {v}" for k, v in latest["stages"].items()))
        else:
            logger.info("captioners: None, caption synthesis skipped")
        scored = score_perplexity(run, params.scorer, latest)
        publish_table(run, "perplexity", "Perplexity scoring", [scored])
        decisions = dedup(run, params.dedup_policy, scored)
        dedup_summary = dedup_report(run, params.dedup_policy, decisions)
        publish_table(run, "dedup", "Dedup kept/dropped per source and task", dedup_summary["by_source_task"],
                      note=f"Media groups shared by several samples: {dedup_summary.get('shared_groups', 0)} of "
                           f"{dedup_summary.get('groups', 0)}; PPL histogram: {dedup_summary.get('histogram')}")
        publish_table(run, "dedup-reasons", "Dedup decisions by reason", dedup_summary["reasons"])
        before_mixtures: Any = decisions
        if params.heldout_per_family is not None:
            heldout = reserve_heldout(run, params.heldout_per_family, params.heldout_seed, decisions)
            publish_table(run, "heldout", f"Held-out evaluation sets ({heldout['split']})",
                          [{"family": f, "samples": n} for f, n in sorted(heldout["counts"].items())])
            before_mixtures = {"dedup": decisions, "heldout": heldout}  # mixtures are drawn after the reservation
        selections, shards = [], []
        for mixture in params.mixtures:
            selection = select_mixture(run, mixture, before_mixtures)
            selections += selection
            shards += build_shards(run, mixture, selection)
        publish_table(run, "mixtures", "Mixtures: requested vs available", selections)
        publish_table(run, "shards", "Shards written", shards)
        if params.heldout_per_family is not None:
            checked = check_leakage(run, sorted({s["dir"] for s in shards}))
            logger.info("leakage check: no held-out sample or media in %d shards", checked)
        stats = catalog_stats(run, shards)
        for section in stats:
            publish_table(run, f"stats-{section['title'][:24]}", section["title"], section["rows"])
        report = write_run_report(run, run.run_id, stats) if params.report else None
    return {"run_id": run.run_id, "report": report, "ingest": ingested, "perplexity": scored, "dedup": decisions,
            "dedup_by_source_task": dedup_summary["by_source_task"], "mixtures": selections, "shards": shards,
            "shard_dirs": shard_dirs(shards), "stats": stats}


def shard_dirs(shards: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Mixture name -> mixture stage -> the shard folder the flow built (what the train flow is handed)."""
    out: dict[str, dict[str, str]] = {}
    for s in shards:
        out.setdefault(s["mixture"], {})[s["stage"]] = s["dir"]
    return out
