"""Where the project's own files are: the checkout (or installed tree) the code runs from.

Shipped manifests (schema, stage specs, mixtures, eval tasks) are found from here, never from the
working directory, so a command run from any folder reads the same files.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
"""Root of the checkout: ``core/``, ``manifests/`` and the other top folders live directly under it."""
MANIFESTS = REPO_ROOT / "manifests"
"""Shipped YAML and SQL: sources, engines, rosters, dedup policies, mixtures, stages, eval tasks, schema."""


def repo_path(path: str | Path) -> Path:
    """``path`` as given when absolute, else relative to the checkout root."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def stored(path: str | Path, root: str | Path) -> str:
    """How a path is written into the catalog (and every record that outlives the process): a file under
    ``root`` (the catalog's folder, i.e. the work dir) relative to it, anything else absolute. So the work folder
    can be moved or copied, and read from any working directory (:func:`resolved` undoes it)."""
    path, root = Path(os.path.abspath(Path(path).expanduser())), Path(os.path.abspath(root))
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def resolved(path: str | Path, root: str | Path) -> Path:
    """A stored path as a usable one: relative paths start at ``root``, absolute ones are kept."""
    path = Path(path)
    return path if path.is_absolute() else Path(os.path.abspath(root)) / path
