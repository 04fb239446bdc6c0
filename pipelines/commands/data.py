"""Commands for models and data: ``mavors models make-tiny``."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()
models_app = typer.Typer(no_args_is_help=True, help="Model checkpoints.")


@models_app.command("make-tiny")
def make_tiny_cmd(out_dir: Path = typer.Argument(Path("mavors-work/models"), help="Where to write them."),
                  seed: int = typer.Option(0, help="Seed of the random weights.")) -> None:
    """Write tiny random-weight checkpoints (SigLIP, Qwen2.5-style LM, Qwen2-VL, shared tokenizer)."""
    from model.tiny import make_tiny

    for name, path in make_tiny(out_dir, seed=seed).items():
        console.print(f"{name:>10}: {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
