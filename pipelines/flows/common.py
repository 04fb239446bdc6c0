"""What every flow shares: parameters, the catalog run record, the step decorator, artifacts.

Imported by the flow modules (``pipelines/flows/<flow>.py``); nothing here touches data.

- :class:`FlowParams`: base of every flow's typed parameters (settings file, work dir, cache switch).
- :func:`recorded_run`: one ``runs`` row per flow run (:func:`core.runs.recorded_run`), keyed by
  Prefect's flow-run id so the catalog and Prefect's UI name the same run.
- :func:`step`: a Prefect task with retries (exponential backoff, only for transient errors), a cache
  key made from the step's inputs (file contents, upstream results, code digest, catalog lineage),
  and a fault-injection point named by the step (:mod:`core.faults`, ``MAVORS_FAULT_AT``).
- :func:`publish_table`, :func:`publish_link`: markdown/link artifacts on the current run.

One file, several processes (DuckDB): a :class:`core.catalog.Catalog` holds the file only for one read or
transaction at a time, so a reader or another flow gets in between a flow's writes, and a process that finds
the file held waits for it (``core.catalog.LOCK_WAIT_S``); trainer subprocesses never meet a held lock.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.tasks import exponential_backoff
from pydantic import BaseModel, ConfigDict

from core import progress, runs
from core.catalog import Catalog, CatalogError
from core.paths import REPO_ROOT
from core.config import ConfigModel, ConfigPath
from core.faults import fault_point
from core.settings import Settings, load_settings

# Exception types worth retrying: the cause is outside the inputs (a lost worker, a busy lock,
# a flaky filesystem or network). Everything else (bad config, bad data) fails at once.
_TRANSIENT_TYPES = (ConnectionError, TimeoutError, BrokenPipeError, InterruptedError)
_TRANSIENT_NAMES = {"RaySystemError", "RayActorError", "WorkerCrashedError", "ObjectLostError",
                    "NodeDiedError", "OutOfMemoryError", "ActorDiedError", "TransientError"}


class FlowParams(ConfigModel):
    """Parameters every flow takes; the defaults are the embedded world (``./mavors-work``). Paths in a
    ``--params`` file are relative to its folder, as in every config file (:data:`core.config.ConfigPath`)."""

    config: ConfigPath | None = None
    """Settings YAML (work dir, catalog path, Ray address). None: ``MAVORS_CONFIG`` or the embedded defaults."""
    work_dir: ConfigPath | None = None
    """Overrides the settings' work dir. Catalog, shards, checkpoints and reports live under it."""
    use_ray: bool = True
    """Run the parallel steps (media probing, scoring, caption synthesis, shard writing) on Ray Data: a
    local instance, or the cluster of the settings' ``ray.address`` / ``RAY_ADDRESS``. False: in the flow
    process (on the tiny demo with 2 cores this saves Ray's start-up; results are identical)."""
    report: bool = True
    """Write the run report (``pipelines.report``, ``<work_dir>/reports/<run id>.html``) at the end and link it
    as an artifact. The end-to-end flow writes one for the whole run instead of one per part."""
    use_cache: bool = True
    """Reuse Prefect's cached results of steps whose inputs did not change. Correctness never
    depends on it: every library step skips finished work itself (catalog rows, complete shards,
    finished stages); the cache only saves re-checking. False: every step runs."""

    def settings(self) -> Settings:
        settings = load_settings(self.config)
        if self.work_dir is not None:
            settings = settings.model_copy(update={"work_dir": self.work_dir})
        return settings


class RunContext(BaseModel):
    """What a step needs to know about the run it belongs to (passed to every task)."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    flow: str
    settings: Settings
    use_ray: bool
    cache_scope: str | None
    """Digest of (code, catalog lineage, paths); None switches Prefect caching off for this run."""

    @contextlib.contextmanager
    def catalog(self) -> Iterator[Catalog]:
        """The catalog for one step (it holds the file only while it reads or writes)."""
        with Catalog(self.settings.catalog) as cat:
            yield cat

    def dir(self, name: str) -> Path:
        return self.settings.dir(name)


# -- run record ------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over the project's code and shipped manifests: a cache key that changes with any edit.

    ``git describe --dirty`` (the catalog's code version) does not change when a dirty tree changes
    again, so it cannot key a cache.
    """
    h = hashlib.sha256()
    for top in ("core", "model", "inference", "curation", "evaluation", "trainers", "demo", "pipelines", "manifests"):
        for path in sorted((REPO_ROOT / top).rglob("*")):
            if path.suffix in {".py", ".yaml", ".yml", ".sql", ".json"} and path.is_file():
                h.update(str(path.relative_to(REPO_ROOT)).encode())
                h.update(path.read_bytes())
    return h.hexdigest()


def _prefect_run_id() -> str | None:
    from prefect.runtime import flow_run

    return flow_run.get_id()


@contextlib.contextmanager
def recorded_run(flow: str, params: FlowParams) -> Iterator[RunContext]:
    """:func:`core.runs.recorded_run` for a flow, yielding the context its steps take.

    The run id is Prefect's flow-run id (a rerun after a crash is a new run). The catalog's
    *lineage* (its first run id) enters every cache key: a deleted and recreated catalog never
    gets results cached against the old one. Once the run is recorded as ended, the run block of its
    report (written by its last step, while it was running) is rewritten with the end.
    """
    settings = params.settings()
    record = {**params.model_dump(mode="json"), "code_digest": code_digest()}
    run_id = _prefect_run_id()
    try:
        with runs.recorded_run(settings.catalog, flow, record, run_id=run_id) as run:
            run_id = run.run_id
            with Catalog(settings.catalog) as cat:
                lineage = cat.scalar("SELECT run_id FROM runs ORDER BY started_at, run_id LIMIT 1")
            scope = None
            if params.use_cache:
                # Absolute on purpose: cached step results carry paths of where they ran, so a moved or copied
                # work dir starts a fresh cache (its library steps still skip what the catalog records as done).
                scope = _digest({"code": code_digest(), "lineage": lineage,
                                 "catalog": str(settings.catalog.resolve()), "work_dir": str(settings.work_dir.resolve())})
            get_run_logger().info("run %s of %s: catalog %s, work dir %s", run.run_id, flow, settings.catalog,
                                  settings.work_dir)
            yield RunContext(run_id=run.run_id, flow=flow, settings=settings, use_ray=params.use_ray,
                             cache_scope=scope)
    finally:
        if run_id is not None:  # the report (its last step) was written while the run was still running
            refresh_report_status(settings, run_id)


def refresh_report_status(settings: Settings, run_id: str) -> None:
    """pipelines.report.html.refresh_status on the run's report, if it wrote one. Runs after the run has ended,
    also when it failed: a failure to refresh is logged, never raised over the run's own outcome."""
    from pipelines.report.html import refresh_status, report_path

    path = report_path(settings.work_dir, run_id)
    if not path.is_file():
        return
    try:
        with Catalog(settings.catalog) as cat, cat.connection():
            refresh_status(cat, run_id, path)
    except (CatalogError, OSError) as e:
        get_run_logger().warning("report %s still shows the run as running: %s", path, e)


# -- steps ------------------------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return _jsonable(value.model_dump(mode="json"))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(_jsonable(value), sort_keys=True, default=str).encode()).hexdigest()


def _file_fingerprints(value: Any) -> dict[str, str]:
    """sha256 of every existing file named by a Path anywhere in the inputs (manifests, specs, rosters)."""
    found: dict[str, str] = {}

    def visit(v: Any) -> None:
        if isinstance(v, BaseModel):
            v = dict(v)
        if isinstance(v, Mapping):
            for x in v.values():
                visit(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                visit(x)
        elif isinstance(v, Path) and v.is_file():
            found[str(v.resolve())] = hashlib.sha256(v.read_bytes()).hexdigest()

    visit(value)
    return found


def step_cache_key(context: Any, parameters: dict[str, Any]) -> str | None:
    """Cache key of one step: its name, its inputs (values and the bytes of files they name),
    and the run's scope (code digest, catalog lineage, paths). The run id is not part of it, so a
    rerun after a crash hits the cache for every finished step and recomputes from the failed one.
    """
    run = parameters.get("run")
    if not isinstance(run, RunContext) or run.cache_scope is None:
        return None
    inputs = {k: v for k, v in parameters.items() if k != "run"}
    return _digest({"step": context.task.name, "scope": run.cache_scope,
                    "files": _file_fingerprints(inputs), "inputs": inputs})


def is_transient(task_: Any, task_run: Any, state: Any) -> bool:
    """Retry only failures whose cause is outside the inputs (``retry_condition_fn``)."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - an unreadable state is not worth a retry
        return False
    if not isinstance(exc, BaseException):
        return False
    if isinstance(exc, CatalogError):
        return "cannot open the catalog" in str(exc)  # the lock is held by another process for now
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    return any(t.__name__ in _TRANSIENT_NAMES for t in type(exc).__mro__)


def _run_name(task_: Any) -> str:
    """The step's run name where the flow gave one (``train-<stage>``, ``evaluate-<stage>``), else its name."""
    return task_.task_run_name if isinstance(task_.task_run_name, str) else task_.name


def _current_run_name(name: str) -> str:
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    return _run_name(ctx.task) if ctx is not None else name


def _cached_line(task_: Any, task_run: Any, state: Any) -> None:
    """A step served from Prefect's cache runs no body: its console line (pipelines.console) comes from here."""
    if state.name == "Cached":
        with progress.task(f"{_run_name(task_)} (cached)"):
            pass


def step(name: str, *, retries: int = 2, backoff_s: float = 2.0,
         timeout_s: float | None = None) -> Callable[[Callable[..., Any]], Any]:
    """Make a flow step: a Prefect task with retries, input-keyed caching, the fault hook and a progress task.

    The decorated function takes ``run: RunContext`` first and calls one library function.
    """
    def wrap(fn: Callable[..., Any]) -> Any:
        @functools.wraps(fn)
        def body(*args: Any, **kwargs: Any) -> Any:
            run = args[0] if args else kwargs.get("run")
            # the step's line on the console (pipelines.console), its library bars drawn inside it
            with progress.task(_current_run_name(name)), \
                    fault_point(name, run.settings.catalog if isinstance(run, RunContext) else None):
                return fn(*args, **kwargs)

        return task(
            body, name=name, retries=retries, retry_delay_seconds=exponential_backoff(backoff_s),
            retry_jitter_factor=0.5, retry_condition_fn=is_transient, cache_key_fn=step_cache_key,
            persist_result=True, timeout_seconds=timeout_s, on_completion=[_cached_line],
        )
    return wrap


@step("report", retries=1)
def write_run_report(run: RunContext, run_id: str, upstream: Any) -> str:
    """pipelines.report.html.write_report: the run's HTML report (tables and plots from the catalog).
    ``run_id`` is an explicit input so that every run gets its own report (cache keys omit the run)."""
    from pipelines.report.html import report_path, write_report

    with run.catalog() as cat, cat.connection():  # one open for the report's reads
        path = write_report(cat, run_id, report_path(run.settings.work_dir, run_id))
    publish_link(run, "report", path, f"run report {run.run_id}")
    return str(path)


# -- artifacts --------------------------------------------------------------------------------------
def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub markdown table of dict rows (columns: given order, else first row's keys)."""
    if not rows:
        return "_(none)_"
    columns = list(columns or rows[0].keys())

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _artifact_key(run: RunContext, key: str) -> str:
    raw = f"{run.flow}-{key}".lower()
    return "".join(c if c.isalnum() else "-" for c in raw)


def publish_table(run: RunContext, key: str, title: str, rows: Sequence[Mapping[str, Any]],
                  columns: Sequence[str] | None = None, note: str = "") -> str:
    """Publish a markdown-table artifact on the current flow/task run; returns the markdown."""
    markdown = f"### {title}\n\n{markdown_table(rows, columns)}\n"
    if note:
        markdown += f"\n{note}\n"
    create_markdown_artifact(markdown, key=_artifact_key(run, key), description=title)
    get_run_logger().info("%s:\n%s", title, markdown_table(rows, columns))
    return markdown


def publish_link(run: RunContext, key: str, path: Path, text: str) -> None:
    create_link_artifact(Path(path).resolve().as_uri(), link_text=text, key=_artifact_key(run, key))
