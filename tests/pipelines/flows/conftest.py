"""Fixtures of the flow tests: one Prefect test harness per session, a private PREFECT_HOME, demo work dirs.

    pytest tests/flows -x -q

Prefect reads its settings when first imported, so PREFECT_HOME is set here, at import.
Flows run with the working directory set to a temporary folder holding ``mavors-work/``:
the shipped demo engine configs name their tiny models as ``{work_dir}/models/...`` (the flows are given
``mavors-work``, relative to it), exactly as ``mavors demo`` lays them out.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # flows_helpers.py

_HOME = Path(tempfile.mkdtemp(prefix="mavors-flows-prefect-"))
os.environ["PREFECT_HOME"] = str(_HOME)
os.environ.pop("PREFECT_API_URL", None)

from pipelines.flows import configure_prefect  # noqa: E402

configure_prefect()


@pytest.fixture(scope="session")
def prefect_api() -> str:
    """Prefect's test harness (a temporary server and database) for the whole session; its API URL.

    Subprocess flow runs in the crash tests talk to the same server and share PREFECT_HOME's result
    storage, as reruns on one machine do.
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_workspace(tmp_path_factory, demo_corpus, tiny_models) -> Path:
    """A folder with ``mavors-work/demo`` (the demo corpus) and ``mavors-work/models`` (tiny models):
    what ``mavors demo`` prepares before its flow. Tests copy it (``fresh_workspace``)."""
    root = tmp_path_factory.mktemp("demo-workspace")
    work = root / "mavors-work"
    work.mkdir()
    shutil.copytree(demo_corpus, work / "demo")
    shutil.copytree(Path(tiny_models["tokenizer"]).parent, work / "models")
    return root


@pytest.fixture(scope="session")
def reference(prefect_api, demo_workspace, tmp_path_factory):
    """The uninterrupted end-to-end run: (workspace, flow summary, catalog snapshot, file checksums).

    It runs at :func:`run_path` and is then moved aside, so the crash test can run at the same path."""
    from flows_helpers import catalog_snapshot, copy_workspace, file_checksums, run_path

    from pipelines.flows.end_to_end import EndToEndParams, end_to_end

    ws = copy_workspace(demo_workspace, run_path(tmp_path_factory))
    cwd = os.getcwd()
    os.chdir(ws)
    try:
        summary = end_to_end(EndToEndParams(work_dir=Path("mavors-work"), use_ray=False))
    finally:
        os.chdir(cwd)
    work = ws / "mavors-work"
    rows, files = catalog_snapshot(work / "catalog.duckdb", ws), file_checksums(work)
    kept = ws.rename(ws.with_name("e2e-reference"))
    return kept, summary, rows, files


@pytest.fixture(scope="session")
def run_flow(prefect_api):
    """``run_flow(workspace, flow, env=, args=)``: ``mavors flow run FLOW`` in a subprocess that leads its own
    process group (an injected SIGKILL takes its trainer children too), against the session's Prefect server
    and result storage, with ``workspace`` as working directory; ``unset`` names variables it must not inherit."""
    def run(workspace: Path, flow: str, *, env: dict[str, str] | None = None, args: tuple[str, ...] = (),
            unset: tuple[str, ...] = (), timeout: float = 1200) -> subprocess.CompletedProcess:
        full_env = {k: v for k, v in os.environ.items() if k not in unset}
        full_env.update({"PREFECT_API_URL": prefect_api, **(env or {})})
        return subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "flow", "run", flow, "--work-dir", "mavors-work", *args],
            cwd=workspace, env=full_env, capture_output=True, text=True, timeout=timeout, start_new_session=True)
    return run
