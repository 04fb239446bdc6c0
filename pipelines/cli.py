"""The ``mavors`` command line.

    mavors --help
    mavors demo                      # demo data + tiny models + the end-to-end flow
    mavors ingest manifests/sources/demo/*.yaml
    mavors catalog stats

Each area registers its commands from ``pipelines/commands/<area>.py`` (a
``register(app)`` function). Heavy libraries are imported inside commands so
``mavors --help`` stays fast. Errors print as one line unless ``--debug``; third-party
logs and bars show only with ``-v`` (:mod:`pipelines.console`).
"""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

# Areas, in the order their commands appear in --help.
COMMAND_MODULES = [
    "pipelines.commands.data",
    "pipelines.commands.dedup",
    "pipelines.commands.captions",
    "pipelines.commands.dpo",
    "pipelines.commands.shards",
    "pipelines.commands.quarantine",
    "pipelines.commands.flows",
    "pipelines.commands.train",
    "pipelines.commands.report",
    "pipelines.commands.eval",
]

console = Console(stderr=True)
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Mavors: curate video/image training data and train Mavors stage by stage.")


def _print_version(requested: bool) -> None:
    """``mavors --version``: the installed package's version (eager: runs before any command is needed)."""
    if requested:
        from importlib.metadata import version as installed_version

        print(f"mavors {installed_version('mavors')}")
        raise typer.Exit(0)


@app.callback()
def _global(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", envvar="MAVORS_CONFIG",
                                          help="Settings YAML (work dir, catalog, Ray address)."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the libraries' own logs, warnings and "
                                 "progress bars (vLLM, transformers, Prefect, Ray), quiet by default."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the installed version and exit."),
) -> None:
    if config is not None:
        os.environ["MAVORS_CONFIG"] = str(config)
    if debug:
        os.environ["MAVORS_DEBUG"] = "1"
    from core import progress
    from pipelines.console import RichRenderer, quiet

    quiet(verbose)
    ctx.with_resource(progress.rendered_by(RichRenderer(console)))


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def error_line(e: BaseException) -> str:
    """The message a user reads: the error's own text, without its Python class name.

    A KeyError's str() is the repr of its key (quoted, escapes doubled): its argument is the message.
    """
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        return e.args[0]
    return str(e) or type(e).__name__


def main() -> None:
    """Entry point: run the app; turn errors into one readable line unless --debug."""
    try:
        # without standalone mode click returns typer.Exit's code instead of exiting with it
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except SystemExit:
        raise
    except (KeyboardInterrupt, typer.Abort):
        console.print("[red]aborted[/red]")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the CLI boundary: one line, not a traceback
        # usage errors (click's ClickException; typer vendors its own copy of click, so match by shape)
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(e.exit_code)
        if os.environ.get("MAVORS_DEBUG") == "1":
            raise
        console.print(f"[red]error:[/red] {error_line(e)}", highlight=False, markup=True, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
