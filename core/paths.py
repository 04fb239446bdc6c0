"""Where the project's own files are: the checkout (or installed tree) the code runs from.

Shipped manifests (schema, stage specs, mixtures, eval tasks) are found from here, never from the
working directory, so a command run from any folder reads the same files.
"""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
"""Root of the checkout: ``core/``, ``manifests/`` and the other top folders live directly under it."""
MANIFESTS = REPO_ROOT / "manifests"
"""Shipped YAML and SQL: sources, engines, rosters, dedup policies, mixtures, stages, eval tasks, schema."""


def repo_path(path: str | Path) -> Path:
    """``path`` as given when absolute, else relative to the checkout root."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path
