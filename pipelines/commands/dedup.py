"""Perplexity scoring and PPL-based dedup (paper App. A): ``mavors ppl score`` and ``mavors dedup ...``.

    mavors ppl score manifests/dedup/scorers/tiny-qwen2vl.yaml      # score pending samples (reruns skip done)
    mavors dedup phash --max-distance 32                            # optional near-duplicate clusters
    mavors dedup run manifests/dedup/paper.yaml                     # decide every sample
    mavors dedup explain 'composite/comp-0003'                      # why kept / dropped
    mavors dedup report                                             # groups, kept/dropped, PPL histogram
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from pipelines.commands import no_ray_option
from pipelines.console import untruncated

console = Console()
ppl_app = typer.Typer(no_args_is_help=True, help="Perplexity of sample texts under a VLM.")
dedup_app = typer.Typer(no_args_is_help=True, help="Deduplicate samples sharing media, by PPL.")


@ppl_app.command("score")
def score_cmd(
    scorer: Path = typer.Argument(..., help="Scorer YAML (manifests/dedup/scorers/*.yaml)."),
    limit: Optional[int] = typer.Option(None, help="Score at most this many pending samples."),
    no_ray: bool = no_ray_option("Run one engine"),
) -> None:
    """Score every sample without a score for this scorer/template/scope; bad samples are quarantined."""
    from core.catalog import Catalog
    from core.runs import recorded_run
    from core.settings import load_settings
    from curation.perplexity import TEMPLATE_VERSION, load_scorer_config, run_scoring

    settings = load_settings()
    config = load_scorer_config(scorer, settings.work_dir)
    with Catalog(settings.catalog) as cat, recorded_run(cat, "ppl score", {
            "scorer": config.model_dump(mode="json"), "limit": limit, "template_version": TEMPLATE_VERSION}) as run:
        counts = run_scoring(cat, config, use_ray=not no_ray, limit=limit, run_id=run.run_id,
                             ray_settings=settings.ray)
    console.print(f"scorer {config.name}: {counts['pending']} pending, {counts['scored']} scored, "
                  f"{counts['quarantined']} quarantined (stage ppl)")


@dedup_app.command("phash")
def phash_cmd(
    max_distance: int = typer.Option(32, help="Largest thumbnail value difference (0-255) that links two media."),
    frames: int = typer.Option(5, help="Frames sampled per video."),
) -> None:
    """Sign media not signed yet, then rebuild near-duplicate clusters at MAX_DISTANCE."""
    from core.catalog import Catalog
    from curation.phash import build_clusters, compute_signatures
    from core.settings import load_settings

    with Catalog(load_settings().catalog) as cat:
        signed = compute_signatures(cat, frames=frames)
        clusters = build_clusters(cat, max_distance, frames=frames)
    console.print(f"signed {signed['signed']} media ({signed['failed']} failed to decode, quarantined); "
                  f"{clusters['media']} media in {clusters['clusters']} clusters, "
                  f"{clusters['merged_media']} merged into another's cluster")


@dedup_app.command("run")
def run_cmd(policy: Path = typer.Argument(..., help="Policy YAML (manifests/dedup/*.yaml).")) -> None:
    """Decide every sample under POLICY (replaces that policy's previous decisions atomically)."""
    from core.catalog import Catalog
    from core.runs import recorded_run
    from core.settings import load_settings
    from curation.dedup import REASONS, load_policy, run_policy

    pol = load_policy(policy)
    with Catalog(load_settings().catalog) as cat, recorded_run(cat, "dedup run", {
            "policy": pol.model_dump(mode="json"), "path": str(policy)}) as run:
        counts = run_policy(cat, pol, run_id=run.run_id)
    table = Table(title=f"dedup policy {pol.name}: {sum(counts.values())} samples")
    for col in ("reason", "samples", "meaning"):
        table.add_column(col)
    for reason, n in counts.items():
        table.add_row(reason, str(n), REASONS.get(reason, ""))
    console.print(untruncated(table))


@dedup_app.command("explain")
def explain_cmd(
    sample_id: str = typer.Argument(..., help="Sample id '<source>/<item>'."),
    policy: Optional[str] = typer.Option(None, help="Policy name (needed when several were run)."),
) -> None:
    """Why SAMPLE_ID was kept or dropped: its group, rank, and the PPL of the group's members."""
    from core.catalog import Catalog
    from curation.dedup import explain, format_explanation
    from core.settings import load_settings

    with Catalog(load_settings().catalog) as cat:
        console.print(format_explanation(explain(cat, sample_id, policy)), highlight=False)


@dedup_app.command("report")
def report_cmd(
    policy: Optional[str] = typer.Option(None, help="Policy name (needed when several were run)."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: <work_dir>/reports/dedup-<policy>)."),
) -> None:
    """Groups, kept/dropped per source and task, reasons; writes report.json and ppl_histogram.png."""
    from core.catalog import Catalog
    from curation.dedup import resolve_policy_name, report
    from core.settings import load_settings

    settings = load_settings()
    with Catalog(settings.catalog) as cat:
        name = resolve_policy_name(cat, policy)
        rep = report(cat, out or settings.dir("reports") / f"dedup-{name}", name)
    console.print(f"policy {name}: {rep['groups']} media groups, {rep['shared_groups']} shared by several samples "
                  f"({rep['samples_in_shared_groups']} samples), largest {rep['largest']}")
    table = Table(title="kept / dropped per source and task")
    for col in ("source", "task", "kept", "dropped"):
        table.add_column(col)
    for r in rep["by_source_task"]:
        table.add_row(r["source"], r["task"], str(r["kept"]), str(r["dropped"]))
    console.print(untruncated(table))
    console.print(f"histogram: {rep['histogram']}")


def register(app: typer.Typer) -> None:
    app.add_typer(ppl_app, name="ppl")
    app.add_typer(dedup_app, name="dedup")
