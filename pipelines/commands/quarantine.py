"""Items the steps refused: ``mavors quarantine list`` and ``mavors quarantine retry``.

    mavors quarantine list                                   # every row: stage, reason, item, detail
    mavors quarantine list --stage shards --reason undecodable_video
    mavors quarantine retry --stage shards                   # clear the rows, rebuild the mixtures' shards
    mavors quarantine retry --stage ppl --reason engine_error   # clear; the command to rerun is printed

Retry after the cause is fixed (a repaired file, a fixed engine): items that still fail are
quarantined again by the rerun, with a fresh row.
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
quarantine_app = typer.Typer(no_args_is_help=True, help="Refused items: list them, clear and retry them.")

RERUN = {
    "ingest": "mavors ingest <the source's manifest>",
    "captions": "mavors captions run",
    "ppl": "mavors ppl score",
    "phash": "mavors dedup phash",
    "dpo": "mavors dpo build --checkpoint ... --mixture ...",
}
"""The command whose next run retries a cleared stage's items (``shards`` is rebuilt by ``retry`` itself)."""


@quarantine_app.command("list")
def list_cmd(stage: Optional[str] = typer.Option(None, help="Only this stage (ingest, captions, ppl, phash, "
                                                              "shards, dpo)."),
             reason: Optional[str] = typer.Option(None, help="Only this reason (e.g. undecodable_video).")) -> None:
    """Quarantine rows as a table, by stage, reason and item."""
    from core.catalog import Catalog
    from core.settings import load_settings
    from curation.quarantine import COLUMNS, quarantined

    with Catalog(load_settings().catalog, read_only=True) as cat, cat.connection():  # one open for all its reads
        rows = quarantined(cat, stage=stage, reason=reason)
    table = Table(title=f"{len(rows)} quarantined")
    for col in COLUMNS:
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*("" if r[c] is None else str(r[c]) for c in COLUMNS))
    console.print(untruncated(table))


@quarantine_app.command("retry")
def retry_cmd(stage: str = typer.Option(..., help="The stage whose rows to clear (ingest, captions, ppl, phash, "
                                                 "shards, dpo)."),
              reason: Optional[str] = typer.Option(None, help="Only rows with this reason."),
              out: Optional[Path] = typer.Option(None, help="Shard root for a mixture with no shards recorded yet; "
                                                             "default <work_dir>/shards."),
              no_ray: bool = no_ray_option("Transcode and write")) -> None:
    """Clear a stage's quarantine rows and redo them (stage shards: rebuild the mixtures that drew the items)."""
    from core.catalog import Catalog
    from core.runs import recorded_run
    from core.settings import load_settings
    from curation.quarantine import clear_quarantine, mixtures_to_rebuild
    from curation.shards.build import build_shards, recorded_out_root
    from pipelines.commands.shards import print_builds, print_shard

    if stage != "shards" and stage not in RERUN:
        raise ValueError(f"--stage {stage!r}: expected one of {', '.join(['shards', *RERUN])}")
    settings = load_settings()
    with Catalog(settings.catalog) as cat, recorded_run(cat, "quarantine retry", {
            "stage": stage, "reason": reason}) as run:
        rows = clear_quarantine(cat, stage, reason=reason)
        console.print(f"cleared {len(rows)} quarantine row(s) of stage {stage}"
                      f"{f' with reason {reason}' if reason else ''}", highlight=False)
        if stage != "shards":
            if rows:
                console.print(f"rerun `{RERUN[stage]}` to retry them", highlight=False)
            return
        for mixture in mixtures_to_rebuild(cat, rows):
            root = recorded_out_root(cat, mixture.name) or out or settings.dir("shards")
            console.print(f"rebuilding mixture {mixture.name} under {root}", highlight=False)
            print_builds(build_shards(cat, mixture, root, parallel=not no_ray, ray_settings=settings.ray,
                                      run_id=run.run_id, on_shard=print_shard))


def register(app: typer.Typer) -> None:
    app.add_typer(quarantine_app, name="quarantine")
