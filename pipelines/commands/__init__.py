"""CLI commands, one module per area; each exposes ``register(app)``.

Options several areas share are defined once here, so every command spells them the same way.
"""
from typing import Any

import typer


def no_ray_option(instead: str) -> Any:
    """``--no-ray``, the one switch from Ray to this process (ingest, captions, PPL, shards, flows, demo)."""
    return typer.Option(False, "--no-ray", help=f"{instead} in this process instead of on Ray.")
