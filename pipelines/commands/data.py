"""Commands for data and models: ``mavors demo-data``, ``mavors ingest``, ``mavors catalog stats|query|describe|show``,
``mavors models make-tiny``.

    mavors demo-data mavors-work/demo
    mavors ingest mavors-work/demo/manifests/*.yaml
    mavors catalog stats
    mavors catalog query "SELECT stage, count(*) FROM training_set GROUP BY stage"
    mavors catalog describe training_set
    mavors catalog show SAMPLE_ID
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from pipelines.commands import no_ray_option
from pipelines.console import untruncated

console = Console()
models_app = typer.Typer(no_args_is_help=True, help="Model checkpoints.")
catalog_app = typer.Typer(no_args_is_help=True, help="Inspect the catalog.")


@models_app.command("make-tiny")
def make_tiny_cmd(out_dir: Optional[Path] = typer.Argument(None, help="Where to write them (default: <work_dir>/models, "
                                                                     "where the demo configs' {work_dir}/models/... "
                                                                     "look)."),
                  seed: int = typer.Option(0, help="Seed of the random weights.")) -> None:
    """Write tiny random-weight checkpoints (SigLIP, Qwen2.5-style LM, Qwen2-VL, shared tokenizer)."""
    from core.settings import load_settings
    from demo.tiny_models import make_tiny

    for name, path in make_tiny(out_dir or load_settings().work_dir / "models", seed=seed).items():
        console.print(f"{name:>10}: {path}")


def demo_data_cmd(out_dir: Path = typer.Argument(Path("mavors-work/demo"), help="Folder to (re)write."),
                  seed: int = typer.Option(0, help="Seed: the same seed writes the same bytes.")) -> None:
    """Generate the demo corpus (videos, images, annotations in every supported format, source manifests)."""
    import json

    from demo.corpus import generate

    root = generate(out_dir, seed=seed)
    corpus = json.loads((root / "corpus.json").read_text())
    console.print(f"wrote {len(corpus['media'])} media files, {len(corpus['quarantine'])} planted bad items")
    console.print(f"manifests: {root / 'manifests'}/*.yaml   (next: mavors ingest {root / 'manifests'}/*.yaml)")


def ingest_cmd(manifests: list[Path] = typer.Argument(..., help="Source manifest YAML files."),
               workers: Optional[int] = typer.Option(None, min=1, help="Concurrent Ray tasks for hashing/probing "
                                                                        "(default: all CPUs)."),
               no_ray: bool = no_ray_option("Hash and probe"),
               ) -> None:
    """Ingest sources: hash + probe media on Ray, write samples/media/quarantine, one transaction per source."""
    import json

    from rich.table import Table

    from core.catalog import Catalog
    from core.runs import recorded_run
    from core.settings import load_settings
    from curation.ingest import ingest
    from curation.sources import load_manifests

    settings = load_settings()
    sources = load_manifests(manifests)  # fails fast on a bad manifest, before Ray starts
    with Catalog(settings.catalog) as cat, recorded_run(cat, "ingest", {
            "sources": [m.name for m in sources], "workers": 0 if no_ray else workers}) as run:
        reports = ingest(sources, cat, media_store=settings.dir("media"), ray_settings=settings.ray,
                         workers=0 if no_ray else workers, run_id=run.run_id)
        run.detail = json.dumps({r.source: r.new + r.replaced for r in reports})
    table = Table(title=f"Ingested into {settings.catalog}")
    for col in ("source", "items", "new", "replaced", "unchanged", "stale", "new media", "quarantined"):
        table.add_column(col, justify="left" if col in ("source", "quarantined") else "right")
    for r in reports:
        refused = ", ".join(f"{k}={v}" for k, v in sorted(r.quarantined.items())) or "-"
        table.add_row(r.source, *(str(x) for x in (r.items, r.new, r.replaced, r.unchanged, r.stale, r.new_media)), refused)
    console.print(untruncated(table))


@catalog_app.command("stats")
def stats_cmd() -> None:
    """Sources, samples, media, duplicate media groups, quarantine reasons (and each area's own sections)."""
    from core.catalog import Catalog
    from core.settings import load_settings
    from pipelines.report.console import print_sections
    from pipelines.report.sections import CATALOG_STATS, build_sections

    settings = load_settings()
    with Catalog(settings.catalog, read_only=True) as cat, cat.connection():  # one open for all its reads
        sections = [s for s in build_sections(cat, CATALOG_STATS) if s.has_data]
    if not sections:
        console.print(f"{settings.catalog}: empty catalog")
    print_sections(console, sections)


@catalog_app.command("query")
def query_cmd(sql: str = typer.Argument(..., help="One SQL statement; the catalog is opened read-only."),
              limit: int = typer.Option(100, help="Rows to print (0: all).")) -> None:
    """Run SQL on the catalog (read-only) and print the result as a table; views: `mavors catalog describe`."""
    from rich.table import Table

    from core.catalog import Catalog
    from core.settings import load_settings
    from pipelines.report.browse import run_query

    settings = load_settings()
    with Catalog(settings.catalog, read_only=True) as cat, cat.connection():  # one open for all its reads
        columns, rows, more = run_query(cat, sql, limit or None)
    table = Table(*columns)
    for row in rows:
        table.add_row(*("NULL" if v is None else str(v) for v in row))
    console.print(untruncated(table))
    console.print(f"{len(rows)} rows" + (f" shown, more left out (--limit {limit})" if more else ""))


@catalog_app.command("describe")
def describe_cmd(name: Optional[str] = typer.Argument(None, help="A table or view; none: list them all.")) -> None:
    """What the catalog's tables and views hold: every relation, or one relation's columns with their comments."""
    from rich.table import Table

    from core.catalog import Catalog
    from core.settings import load_settings
    from pipelines.report.browse import describe, relations

    settings = load_settings()
    with Catalog(settings.catalog, read_only=True) as cat, cat.connection():  # one open for all its reads
        if name is None:
            title, (columns, rows) = str(settings.catalog), (["name", "kind", "rows", "comment"], relations(cat))
        else:
            comment, (columns, rows) = describe(cat, name)
            title = f"{name}: {comment}"
    table = Table(*columns, title=title, title_justify="left")
    for row in rows:
        table.add_row(*("-" if v is None else str(v) for v in row))
    console.print(untruncated(table))


@catalog_app.command("show")
def show_cmd(sample_id: str = typer.Argument(..., help="A samples.sample_id ('<source>/<item>').")) -> None:
    """Everything about one sample: source, media, captions, PPL, dedup verdict, held-out, mixtures, shards,
    DPO pairs, quarantine."""
    from core.catalog import Catalog
    from core.settings import load_settings
    from pipelines.report.browse import sample_card
    from pipelines.report.console import print_sections

    with Catalog(load_settings().catalog, read_only=True) as cat, cat.connection():  # one open for all its reads
        sections = sample_card(cat, sample_id)
    for sec in sections:
        if sec.has_data:
            print_sections(console, [sec])
        else:
            console.print(f"[bold]{sec.title}[/bold]: {sec.note}")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
    app.add_typer(catalog_app, name="catalog")
    app.command("demo-data")(demo_data_cmd)
    app.command("ingest")(ingest_cmd)
