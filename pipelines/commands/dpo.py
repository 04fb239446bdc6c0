"""DPO preference pairs: ``mavors dpo build`` (paper §4 Stage 3, App. A) and ``mavors dpo sets``.

    mavors dpo build --checkpoint mavors-work/models/qwen2vl --mixture manifests/mixtures/dpo.yaml
    mavors dpo build --checkpoint CK --mixture M.yaml --dpo-config my-dpo.yaml   # DpoConfig overrides
    mavors dpo sets                                                          # pair sets and their lineage
    mavors dpo export --format parquet --out pairs.parquet                   # the newest set as a TRL dataset

A rerun with the same checkpoint and config skips inputs already decided; a new
checkpoint builds a new pair set beside the old ones.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from pipelines.console import untruncated

console = Console()
dpo_app = typer.Typer(no_args_is_help=True, help="DPO preference pairs from a policy checkpoint.")


@dpo_app.command("build")
def build_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Policy checkpoint: a Mavors export or any local VLM."),
    mixture: Path = typer.Option(..., "--mixture", help="Mixture YAML whose `dpo` stage lists the inputs."),
    dpo_config: Optional[Path] = typer.Option(None, "--dpo-config",
                                              help="DpoConfig YAML (embedded defaults otherwise)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Output root (default: <work_dir>/dpo)."),
) -> None:
    """Generate, judge and pair; record every decision; shard the pairs in TRL's format."""
    from core.catalog import Catalog
    from core.config import load_yaml
    from core.runs import recorded_run
    from curation.mixtures import load_mixture, select_mixture
    from curation.preference.build import build_pair_set, mixture_inputs
    from curation.preference.config import DpoConfig
    from core.settings import load_settings

    settings = load_settings()
    cfg = load_yaml(dpo_config, DpoConfig, settings.work_dir) if dpo_config else DpoConfig()
    mix = load_mixture(mixture)
    if "dpo" not in mix.stages:
        raise ValueError(f"{mixture}: the mixture has no `dpo` stage to take inputs from")
    root = out_dir or cfg.output_dir or settings.dir("dpo")
    with Catalog(settings.catalog) as cat, recorded_run(cat, "dpo build", {
            "checkpoint": str(checkpoint), "mixture": str(mixture), "config": cfg.model_dump(mode="json")}) as run:
        select_mixture(cat, mix, manifest_path=mixture, run_id=run.run_id)
        ids, mix_sha = mixture_inputs(cat, mix.name)
        report = build_pair_set(cat, checkpoint, ids, cfg, out_dir=root, mixture=mix.name,
                                mixture_sha256=mix_sha, run_id=run.run_id)
    table = Table(title=f"pair set {report.pair_set_id} (checkpoint {report.checkpoint_sha256[:12]}, "
                        f"backend {report.backend}; {report.decided} decided, {report.skipped} already done)")
    for col in ("domain", "reason", "inputs"):
        table.add_column(col)
    for domain, reasons in report.counts.items():
        for reason, n in reasons.items():
            table.add_row(domain, reason, str(n))
    console.print(untruncated(table))
    console.print(f"{len(report.shards)} shard(s) under {root / report.pair_set_id / 'shards'}")


@dpo_app.command("sets")
def sets_cmd() -> None:
    """Pair sets in the catalog, newest first, with their checkpoint and the set they supersede."""
    from core.catalog import Catalog
    from core.settings import load_settings

    with Catalog(load_settings().catalog) as cat:
        rows = cat.query("""SELECT s.pair_set_id, s.checkpoint_path, s.checkpoint_sha256[:12] AS ck, s.backend,
                                   s.previous_pair_set, s.created_at,
                                   (SELECT count(*) FROM dpo_pairs p WHERE p.pair_set_id = s.pair_set_id) AS pairs
                            FROM dpo_pair_sets s ORDER BY s.created_at DESC""")
    table = Table(title="DPO pair sets")
    for col in ("pair set", "checkpoint", "sha256", "backend", "pairs", "previous", "created"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["pair_set_id"], r["checkpoint_path"], r["ck"], r["backend"], str(r["pairs"]),
                      r["previous_pair_set"] or "-", str(r["created_at"])[:19])
    console.print(untruncated(table))


@dpo_app.command("export")
def export_cmd(
    pair_set: Optional[str] = typer.Argument(None, help="A pair set id (mavors dpo sets); default: the newest."),
    fmt: str = typer.Option("parquet", "--format", help="Output format: parquet (TRL's preference columns)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output file (default: <work_dir>/dpo/<set>/trl.parquet)."),
    videos: str = typer.Option("bytes", "--videos", help="bytes: embed videos; paths: absolute paths of files "
                                                         "written beside the output."),
) -> None:
    """Write a pair set as a TRL-ready preference dataset: prompt/chosen/rejected messages, images embedded."""
    from core.catalog import Catalog
    from core.settings import load_settings
    from curation.preference.records import export_parquet

    if fmt != "parquet":
        raise ValueError(f"--format {fmt}: only parquet is supported")
    settings = load_settings()
    with Catalog(settings.catalog, read_only=True) as cat, cat.connection():  # one open for all its reads
        set_id = pair_set or cat.scalar("SELECT pair_set_id FROM dpo_pair_sets ORDER BY created_at DESC LIMIT 1")
        if set_id is None:
            raise ValueError(f"{settings.catalog}: no DPO pair sets yet (run mavors dpo build)")
        if not cat.scalar("SELECT count(*) FROM dpo_pair_sets WHERE pair_set_id = ?", [set_id]):
            raise ValueError(f"pair set {set_id!r} is not in the catalog {settings.catalog} (see mavors dpo sets)")
        shards = [cat.resolved(r[0]) for r in cat.con.execute(
            "SELECT path FROM shards WHERE mixture = ? ORDER BY stage, name", [f"dpo/{set_id}"]).fetchall()]
    target = out or settings.dir("dpo") / set_id / "trl.parquet"
    n = export_parquet(shards, target, videos=videos)
    console.print(f"{n} pairs of set {set_id} -> {target}")


def register(app: typer.Typer) -> None:
    app.add_typer(dpo_app, name="dpo")
