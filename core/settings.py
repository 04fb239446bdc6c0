"""Where the platform keeps its state and which engines it talks to.

The embedded default needs no file: everything lives under ``./mavors-work``
and Ray starts locally. A cluster sets these in a YAML file passed as
``mavors --config FILE`` (or ``MAVORS_CONFIG``); see ``infra/`` for examples.
"""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from core.config import ConfigModel, ConfigPath, load_yaml


class RaySettings(ConfigModel):
    address: str | None = None
    """Ray cluster address (``ray://head:10001`` or ``auto``). None: ``RAY_ADDRESS`` if set, else start Ray locally.
    Cluster: the head node's address."""
    num_cpus: int = Field(2, ge=1)
    """CPUs for a locally started Ray (ignored when connecting to a cluster)."""
    object_store_mb: int = Field(512, ge=64)
    """Object store size for a locally started Ray, in MiB. Cluster: set by ``ray start``."""


class Settings(ConfigModel):
    work_dir: ConfigPath = Path("mavors-work")
    """Root of everything the platform writes: catalog, shards, checkpoints, reports (relative: to the settings
    file's folder; embedded default: ``./mavors-work``). Cluster: a shared filesystem path."""
    catalog_path: ConfigPath | None = None
    """DuckDB catalog file; default ``<work_dir>/catalog.duckdb``. Paths the catalog stores are relative to its
    folder (:func:`core.paths.stored`), so keep it inside the work dir for the work dir to stay movable."""
    ray: RaySettings = RaySettings()

    @property
    def catalog(self) -> Path:
        return self.catalog_path or self.work_dir / "catalog.duckdb"

    def dir(self, name: str) -> Path:
        """A named folder under the work dir (``shards``, ``checkpoints``, ``reports``, ...), created on demand."""
        path = self.work_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def load_settings(path: str | Path | None = None) -> Settings:
    """Settings from ``path``, else from ``MAVORS_CONFIG``, else the embedded defaults."""
    path = path or os.environ.get("MAVORS_CONFIG")
    return load_yaml(path, Settings) if path else Settings()
