"""Commands for mixtures and shards.

    mavors shards select manifests/mixtures/demo-stage2.yaml      # draw + requested-vs-available table
    mavors shards build manifests/mixtures/demo-stage2.yaml       # select, transcode, write shards (Ray)
    mavors shards verify mavors-work/shards/demo-stage2           # checksums, counts, members, decodability
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from pipelines.commands import no_ray_option

console = Console()
shards_app = typer.Typer(no_args_is_help=True, help="Stage mixtures and WebDataset shards.")


REPLACE_HELP = ("Redraw the mixture from the catalog as it is now (its members and shard rows are dropped), "
                "also when its config is unchanged.")


def _select(cat, path: Path, strict: bool, replace: bool, run_id: str | None):
    from curation.mixtures import load_mixture, select_mixture

    mixture = load_mixture(path)
    selection = select_mixture(cat, mixture, strict=strict, replace=replace, manifest_path=path, run_id=run_id)
    for w in selection.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False, soft_wrap=True)
    console.print(f"mixture {mixture.name}: {selection.n_selected} samples"
                  f"{' (already selected, reused)' if selection.reused else ''}; "
                  f"dedup policy: {selection.dedup_policy or 'none'}")
    console.print(selection.table(), highlight=False, soft_wrap=True)
    if selection.shortfalls():
        console.print(f"[yellow]warning:[/yellow] {len(selection.shortfalls())} of {len(selection.entries)} entries "
                      "are absent or short (see status); --strict makes that an error", highlight=False)
    return mixture, selection


@shards_app.command("select")
def select_cmd(mixture: Path = typer.Argument(..., help="Mixture YAML (manifests/mixtures/...)."),
               strict: bool = typer.Option(False, help="A source absent from the catalog or short of its count fails."),
               replace: bool = typer.Option(False, help=REPLACE_HELP)) -> None:
    """Draw a mixture's samples into the catalog and print requested vs available per source."""
    from core.catalog import Catalog
    from core.runs import recorded_run
    from core.settings import load_settings

    with Catalog(load_settings().catalog) as cat, recorded_run(cat, "shards select", {
            "mixture": str(mixture), "strict": strict, "replace": replace}) as run:
        _select(cat, mixture, strict, replace, run.run_id)


@shards_app.command("build")
def build_cmd(mixture: Path = typer.Argument(..., help="Mixture YAML (manifests/mixtures/...)."),
              out: Optional[Path] = typer.Option(None, help="Shard root; default <work_dir>/shards."),
              stage: Optional[list[str]] = typer.Option(None, help="Only these stages (repeatable)."),
              strict: bool = typer.Option(False, help="A source absent from the catalog or short of its count fails."),
              replace: bool = typer.Option(False, help=REPLACE_HELP),
              no_ray: bool = no_ray_option("Transcode and write")) -> None:
    """Select a mixture, transcode its media and write its shards (a rerun skips finished shards)."""
    from core.catalog import Catalog
    from core.runs import recorded_run
    from core.settings import load_settings
    from curation.shards.build import build_shards

    settings = load_settings()
    out_root = out or settings.dir("shards")
    with Catalog(settings.catalog) as cat, recorded_run(cat, "shards build", {
            "mixture": str(mixture), "out": str(out_root), "stages": stage}) as run:
        cfg, _ = _select(cat, mixture, strict, replace, run.run_id)
        builds = build_shards(cat, cfg, out_root, stages=stage, parallel=not no_ray, ray_settings=settings.ray,
                              run_id=run.run_id, on_shard=print_shard)
    print_builds(builds)


def print_builds(builds) -> None:
    """One line per built stage: shards, samples, folder, what was written or kept, quarantine counts."""
    for b in builds:
        q = ", ".join(f"{k}: {v}" for k, v in b.quarantined.items()) or "none"
        console.print(f"stage {b.stage}: {len(b.shards)} shards, {b.n_samples} samples -> {b.out_dir} "
                      f"(written {len(b.written)}, already complete {len(b.skipped)}, removed {len(b.removed)}; "
                      f"quarantined: {q})", highlight=False, soft_wrap=True)


def print_shard(s) -> None:
    console.print(f"  wrote {s.name}: {s.n_samples} samples, {s.bytes / 1e6:.1f} MB", highlight=False)


@shards_app.command("verify")
def verify_cmd(directory: Path = typer.Argument(..., help="A shard folder (with index.json) or a root above several."),
               decode: bool = typer.Option(True, help="Decode every image and video."),
               catalog: bool = typer.Option(False, help="Also compare checksums with the catalog's shards table.")) -> None:
    """Check shards against their index (and the catalog): sha256, sizes, counts, members, decodability."""
    from curation.shards.verify import verify_shards

    recorded = None
    if catalog:
        from core.catalog import Catalog
        from core.settings import load_settings

        with Catalog(load_settings().catalog, read_only=True) as cat, cat.connection():  # one open for all its reads
            recorded = {r["name"]: r["sha256"] for r in cat.query("SELECT name, sha256 FROM shards")}
    report = verify_shards(directory, recorded=recorded, decode=decode)
    for p in report.problems:
        console.print(f"[red]FAIL[/red] {p}", highlight=False)
    console.print(f"{report.n_shards} shards, {report.n_samples} samples: "
                  f"{'OK' if report.ok else f'{len(report.problems)} problems'}")
    if not report.ok:
        bad = sorted({p.split(":")[0] for p in report.problems})
        raise RuntimeError(f"verification failed: {', '.join(bad)}")


def register(app: typer.Typer) -> None:
    app.add_typer(shards_app, name="shards")
