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


class CatalogSettings(ConfigModel):
    """How DuckDB runs the catalog's queries (passed to ``duckdb.connect`` when the file is opened). Big steps
    (dedup, ingest, mixture draws over 10^8 rows) stay within ``memory_limit`` by spilling sorts, windows,
    joins and aggregates to ``temp_directory``."""

    threads: int | None = Field(None, ge=1)
    """DuckDB worker threads. None: one per core (DuckDB's default). Cluster: the driver node's cores, e.g. 32."""
    memory_limit: str | None = None
    """DuckDB's memory limit, e.g. ``6GB``: beyond it, operators spill to ``temp_directory``. None: DuckDB's
    default, 80% of RAM (too much when Ray workers share the machine). Cluster: half the head node's RAM, e.g.
    ``128GB``."""
    temp_directory: ConfigPath | None = None
    """Where DuckDB spills. None: ``<catalog file>.tmp`` beside the catalog (DuckDB's default). Cluster: a
    node-local NVMe folder, e.g. ``/local/mavors/duckdb-tmp``, not the shared filesystem."""
    preserve_insertion_order: bool = True
    """DuckDB keeps the row order of results without ORDER BY when True; False (here and on the cluster) lets
    large INSERT ... SELECT and window queries run in parallel with less memory. Every catalog query that needs
    an order says ORDER BY."""

    def duckdb_config(self) -> dict[str, str | int | bool]:
        """The ``config`` of ``duckdb.connect`` (unset fields: DuckDB's defaults)."""
        config = {"threads": self.threads, "memory_limit": self.memory_limit,
                  "temp_directory": None if self.temp_directory is None else str(self.temp_directory),
                  "preserve_insertion_order": self.preserve_insertion_order}
        return {k: v for k, v in config.items() if v is not None}


class Settings(ConfigModel):
    work_dir: ConfigPath = Path("mavors-work")
    """Root of everything the platform writes: catalog, shards, checkpoints, reports (relative: to the settings
    file's folder; embedded default: ``./mavors-work``). Cluster: a shared filesystem path."""
    catalog_path: ConfigPath | None = None
    """DuckDB catalog file; default ``<work_dir>/catalog.duckdb``. Paths the catalog stores are relative to its
    folder (:func:`core.paths.stored`), so keep it inside the work dir for the work dir to stay movable."""
    ray: RaySettings = RaySettings()
    duckdb: CatalogSettings = CatalogSettings()
    """How DuckDB runs catalog queries (threads, memory limit, where it spills)."""

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
