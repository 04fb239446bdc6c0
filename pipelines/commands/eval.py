"""``mavors eval``: reserve held-out sets, check shards for leakage, evaluate a stage export."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from pipelines.console import untruncated

console = Console()
eval_app = typer.Typer(no_args_is_help=True, help="Held-out sets and evaluation after every stage.")


@eval_app.command("split")
def split_cmd(per_family: int = typer.Option(8, help="Samples held out per task family."),
              seed: int = typer.Option(0, help="Seed of the hash order the samples are drawn in.")) -> None:
    """Reserve held-out sets (image/video QA and captions) before any mixture is sampled, and export them."""
    from core.catalog import Catalog
    from curation.heldout import export_heldout, reserve_heldout
    from core.settings import load_settings

    settings = load_settings()
    with Catalog(settings.catalog) as cat:
        split = reserve_heldout(cat, per_family=per_family, seed=seed)
        task_dir = export_heldout(cat, settings.dir("eval"))
    table = Table(title=f"{split.name} ({'reserved' if split.created else 'already reserved'})")
    table.add_column("family")
    table.add_column("samples", justify="right")
    for family, n in sorted(split.counts.items()):
        table.add_row(family, str(n))
    console.print(untruncated(table))
    console.print(f"lmms-eval tasks: {task_dir}")


@eval_app.command("check-leakage")
def leakage_cmd(shards: list[Path] = typer.Argument(..., help="Shard files or folders (searched for *.tar).")) -> None:
    """Fail if any held-out sample id or media appears in the given training shards."""
    from core.catalog import Catalog
    from curation.leakage import check_no_leakage
    from core.settings import load_settings

    with Catalog(load_settings().catalog) as cat:
        n = check_no_leakage(cat, shards)
    console.print(f"no held-out sample or media in {n} shards")


@eval_app.command("run")
def run_cmd(checkpoint: Path = typer.Option(..., help="A stage export (save_pretrained of model + processor)."),
            stage: str = typer.Option(..., help="Stage name to record the results under."),
            limit: Optional[int] = typer.Option(None, help="At most this many docs per task.")) -> None:
    """Evaluate a checkpoint on the held-out tasks (lmms-eval) and the held-out loss; rows go to `evals`
    under this command's own ``eval run``."""
    from core.catalog import Catalog
    from core.runs import recorded_run
    from core.settings import load_settings
    from evaluation.stage_eval import evaluate_export

    settings = load_settings()
    with Catalog(settings.catalog) as cat, recorded_run(cat, "eval run", {
            "checkpoint": str(checkpoint), "stage": stage, "limit": limit}) as run:
        rows = evaluate_export(cat, checkpoint, stage, run.run_id, settings.dir("eval"), limit=limit)
    table = Table(title=f"{stage}: {checkpoint}")
    for col in ("task", "metric", "value", "samples"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["task"], r["metric"], f"{r['value']:.4f}", str(r["samples"]))
    console.print(untruncated(table))


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
