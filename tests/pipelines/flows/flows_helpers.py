"""Helpers of the flow tests: workspace copies, a catalog snapshot to compare runs, file checksums."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import duckdb

# Tables that describe a run, not the data: they differ between any two runs by design.
RUN_TABLES = {"runs", "schema_version"}
# Columns that describe how a row came about, not what it says (a resumed stage says so).
RUN_COLUMNS = {"resumed_from_step"}


def copy_workspace(template: Path, dest: Path) -> Path:
    """A copy of a prepared workspace (``mavors-work/demo`` + ``mavors-work/models``)."""
    shutil.copytree(template, dest, symlinks=True)
    return dest


def run_path(tmp_path_factory) -> Path:
    """The one absolute path where end-to-end runs happen: exports embed their base models' absolute paths
    (``_name_or_path`` in config.json), and the DPO pair set is named by the export's content, so two runs
    compare byte for byte only when they ran at the same place."""
    return tmp_path_factory.getbasetemp() / "e2e-run"


def catalog_snapshot(path: Path, workspace: Path) -> dict[str, list[tuple]]:
    """Every data table's rows, sorted, without timestamps and run ids, workspace path made relative.

    Read with plain DuckDB SQL (read-only), independent of the catalog module.
    """
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY 1").fetchall()]
        out = {}
        for table in tables:
            if table in RUN_TABLES:
                continue
            cols = [r[0] for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                "AND data_type NOT LIKE 'TIMESTAMP%' AND column_name NOT LIKE '%run_id' ORDER BY ordinal_position",
                [table]).fetchall() if r[0] not in RUN_COLUMNS]
            select = ", ".join('"%s"' % c for c in cols)
            rows = con.execute(f"SELECT {select} FROM {table}").fetchall()
            out[table] = sorted((tuple(_normalize(v, workspace) for v in row) for row in rows), key=repr)
        return out
    finally:
        con.close()


def _normalize(value: Any, workspace: Path) -> Any:
    text = json.dumps(value, default=str, sort_keys=True) if not isinstance(value, str) else value
    text = text.replace(str(workspace.resolve()), "<ws>").replace(str(workspace), "<ws>")
    return text


def file_checksums(work_dir: Path) -> dict[str, str]:
    """sha256 of every shard tar (mixture shards and DPO pair shards) and every exported weight file."""
    out = {}
    patterns = ["shards/**/*.tar", "dpo/**/*.tar", "train/**/export/*.safetensors"]
    for pattern in patterns:
        for p in sorted(work_dir.glob(pattern)):
            out[str(p.relative_to(work_dir))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
