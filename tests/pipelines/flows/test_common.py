"""The flow layer's own rules: cache keys, which failures retry, typed parameters, artifacts as markdown,
one run record per flow run.

    pytest tests/pipelines/flows/test_common.py -q
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest
from prefect import flow
from prefect.runtime import flow_run

from core.catalog import CatalogError
from core.config import ConfigError, load_yaml
from core.settings import Settings
from pipelines.flows.common import FlowParams, RunContext, is_transient, markdown_table, recorded_run, step_cache_key


def _run(run_id: str = "r1", scope: str | None = "scope-a") -> RunContext:
    return RunContext(run_id=run_id, flow="curate", settings=Settings(), use_ray=False, cache_scope=scope)


def _key(name: str, **params):
    return step_cache_key(SimpleNamespace(task=SimpleNamespace(name=name)), params)


def test_cache_key_ignores_the_run_id_and_follows_inputs(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text("name: a\n")
    key = _key("ingest", run=_run("r1"), manifests=[manifest], state=[["f", 1, 2]])
    # A rerun after a crash is a new run with the same inputs: same key, so the step is not recomputed.
    assert key == _key("ingest", run=_run("r2"), manifests=[manifest], state=[["f", 1, 2]])
    # The bytes of a file named by the inputs are part of the key, not just its path.
    manifest.write_text("name: b\n")
    changed = _key("ingest", run=_run("r1"), manifests=[manifest], state=[["f", 1, 2]])
    assert changed != key
    # So are upstream results, the step's name, and the run's scope (code digest, catalog lineage).
    assert _key("ingest", run=_run(), manifests=[manifest], state=[["f", 1, 3]]) != changed
    assert _key("dedup", run=_run(), manifests=[manifest], state=[["f", 1, 2]]) != changed
    assert _key("ingest", run=_run(scope="scope-b"), manifests=[manifest], state=[["f", 1, 2]]) != changed
    # use_cache=False (no scope): no key, Prefect runs the step.
    assert _key("ingest", run=_run(scope=None), manifests=[manifest]) is None


@pytest.mark.parametrize("exc, retried", [
    (ConnectionError("reset"), True),
    (TimeoutError("slow"), True),
    (CatalogError("x.duckdb: cannot open the catalog (lock held)"), True),
    (CatalogError("schema files are named NNNN_name.sql"), False),
    (type("RayActorError", (Exception,), {})("actor died"), True),
    (ConfigError("m.yaml: field 'name': required"), False),
    (FileNotFoundError("no such manifest"), False),
    (ValueError("bad sample"), False),
])
def test_only_transient_failures_are_retried(exc, retried):
    state = SimpleNamespace(result=lambda raise_on_failure=False: exc)
    assert is_transient(None, None, state) is retried


def test_parameters_are_typed_and_documented(tmp_path):
    from pipelines.flows.end_to_end import EndToEndParams

    bad = tmp_path / "bad.yaml"
    bad.write_text("curate: {scorrer: x.yaml}\n")
    with pytest.raises(ConfigError, match="curate.scorrer"):
        load_yaml(bad, EndToEndParams)
    good = tmp_path / "good.yaml"
    good.write_text("work_dir: /data/w\nuse_ray: false\ntrain: {stages: [stage1]}\n")
    params = load_yaml(good, EndToEndParams)
    part = params.part(params.curate)
    assert part.work_dir == Path("/data/w") and part.use_ray is False
    assert params.part(params.train).stages == ["stage1"]


def test_markdown_table_escapes_cells():
    text = markdown_table([{"source": "a|b", "n": 3, "ppl": 1.23456}])
    assert text.splitlines() == ["| source | n | ppl |", "|---|---|---|", "| a\\|b | 3 | 1.235 |"]
    assert markdown_table([]) == "_(none)_"



@flow(name="tiny")
def tiny(params: FlowParams, fail: bool) -> tuple[str, str | None]:
    with recorded_run("tiny", params) as run:
        if fail:
            raise ValueError("the tiny flow failed")
        return run.run_id, flow_run.get_id()


def test_a_flow_run_is_one_runs_row_under_prefects_flow_run_id(prefect_api, tmp_path):
    """pipelines.flows.common.recorded_run on core.runs.recorded_run: completed, or failed with the message."""
    params = FlowParams(work_dir=tmp_path / "work", use_ray=False)
    run_id, prefect_id = tiny(params, False)
    with pytest.raises(ValueError, match="tiny flow failed"):
        tiny(params, True)
    with duckdb.connect(str(tmp_path / "work" / "catalog.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT run_id, command, status, detail, parameters FROM runs "
                           "ORDER BY started_at").fetchall()
    assert run_id == prefect_id
    assert [r[:4] for r in rows] == [(prefect_id, "tiny", "completed", None),
                                     (rows[1][0], "tiny", "failed", "ValueError: the tiny flow failed")]
    assert rows[1][0] != prefect_id and all("code_digest" in json.loads(r[4]) for r in rows)


@flow(name="tiny-outer")
def tiny_outer(params: FlowParams) -> tuple[str, str, str]:
    """A flow with a subflow, writing its report as its last step (as the end-to-end flow does)."""
    from pipelines.flows.common import write_run_report

    with recorded_run("tiny-outer", params) as run:
        inner, _ = tiny(params, False)
        report = write_run_report(run, run.run_id, None)
    return run.run_id, inner, report


def test_a_subflow_run_names_its_parent_and_the_report_shows_the_end(prefect_api, tmp_path):
    params = FlowParams(work_dir=tmp_path / "work", use_ray=False, use_cache=False)
    outer, inner, report = tiny_outer(params)
    with duckdb.connect(str(tmp_path / "work" / "catalog.duckdb"), read_only=True) as con:
        parents = dict(con.execute("SELECT run_id, parent_run_id FROM runs").fetchall())
    assert parents == {outer: None, inner: outer}
    page = Path(report).read_text()  # written while the run was running, rewritten once it ended
    assert "<th>status</th><td>completed</td>" in page and "before the run ended" not in page
    assert inner in page  # the subflow is listed among the report's runs


def test_every_step_prints_one_line_also_when_served_from_the_cache(prefect_api, tmp_path):
    """A step's line on the console (pipelines.console): its run name and seconds when it runs, "(cached)" when
    Prefect's cache answers and the body never runs; the library's bar inside it leaves no line of its own."""
    import io
    import re

    from rich.console import Console

    from core import progress
    from pipelines.console import RichRenderer
    from pipelines.flows.common import step

    bodies = []

    @step("count-rows", retries=0)
    def count_rows(run: RunContext, n: int) -> int:
        bodies.append(n)
        with progress.task("rows", total=n) as bar:
            bar.advance(n)
        return n

    @flow(name="cached-lines")
    def lines_flow(run: RunContext) -> None:
        count_rows(run, 3)
        count_rows.with_options(task_run_name="count-rows-again")(run, 3)  # same inputs: the cache answers

    out = io.StringIO()
    # a scope of its own: Prefect's result storage outlives the session, and no earlier session's result may answer
    scope = f"test-cache-lines-{uuid.uuid4()}"
    with progress.rendered_by(RichRenderer(Console(file=out, width=120, force_terminal=False))):
        lines_flow(_run(scope=scope))
    assert bodies == [3]
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(r"✓ count-rows  \d+\.\d s", lines[0])
    assert re.fullmatch(r"✓ count-rows-again \(cached\)  \d+\.\d s", lines[1])
