"""``mavors report RUN_ID``: the run report as a self-contained HTML page (pipelines/report/html.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console()


def report_cmd(run_id: str = typer.Argument(..., help="A run id from the catalog's runs table, or 'latest' (the newest top-level run)."),
               out: Optional[Path] = typer.Option(None, "--out", help="Output file (default: under the work dir).")
               ) -> None:
    """Write the HTML report of a run (its rows and its subflows'): samples, captions, PPL, dedup, shards,
    training, DPO pairs, evals, quarantine; 'latest' is the newest top-level run."""
    from core.catalog import Catalog
    from core.settings import load_settings
    from pipelines.report.html import report_path, resolve_run, write_report

    settings = load_settings()
    with Catalog(settings.catalog) as cat, cat.connection():  # one open for the report's reads
        run = resolve_run(cat, run_id)
        path = write_report(cat, run["run_id"], out or report_path(settings.work_dir, run["run_id"]))
    console.print(f"report: {path}")


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
