"""``mavors captions``: synthesize captions with a roster of VLMs and a merging LLM (paper, Appendix A).

    mavors models make-tiny mavors-work/models
    mavors captions run manifests/captioners/demo.yaml --source kinetics_like
    mavors captions run manifests/captioners/demo.yaml --source kinetics_like --no-ray   # one process
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from pipelines.commands import no_ray_option
from pipelines.console import untruncated

console = Console()
captions_app = typer.Typer(no_args_is_help=True, help="Caption synthesis (several VLMs + a merger).")


@captions_app.command("run")
def run_cmd(
    roster: Path = typer.Argument(..., help="Roster YAML (manifests/captioners/*.yaml)."),
    source: Optional[list[str]] = typer.Option(None, "--source", help="Source to caption (repeatable); "
                                                                       "default: the roster's sources."),
    no_ray: bool = no_ray_option("Run the captioners and the merger"),
) -> None:
    """Caption the media of SOURCE with every captioner, merge, and write caption samples to the catalog."""
    from curation.captions import load_roster, run_captions
    from core.catalog import Catalog
    from core.runs import recorded_run
    from core.settings import load_settings

    settings = load_settings()
    config = load_roster(roster, settings.work_dir)
    with Catalog(settings.catalog) as cat, recorded_run(cat, "captions run", {
            "roster": str(roster), "sources": source or config.sources,
            "config": json.loads(config.model_dump_json())}) as run:
        report = run_captions(cat, config, source or None, use_ray=not no_ray, run_id=run.run_id, ray_settings=settings.ray)
        run.detail = json.dumps(report.as_dict())
    r = report.as_dict()
    console.print(f"raw captions: {r['raw_new']} new ({r['raw_rejected']} rejected by gates); merged: "
                  f"{r['merged_new']} new ({r['merged_rejected']} rejected); caption samples written: "
                  f"{r['samples_written']}; quarantined: {r['quarantined']}")
    table = Table("stage", "items", "failures", "busy s", "items/s")
    for name, s in r["stages"].items():
        table.add_row(name, str(s["items"]), str(s["failures"]), f"{s['seconds']:.2f}", f"{s['items_per_s']:.2f}")
    console.print(untruncated(table))


def register(app: typer.Typer) -> None:
    app.add_typer(captions_app, name="captions")
