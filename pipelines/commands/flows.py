"""Commands that run the Prefect flows: ``mavors demo``, ``mavors flow run``, ``mavors deploy``, ``mavors serve``.

    mavors demo                                   # demo data + tiny models + end-to-end under ./mavors-work
    mavors flow run curate --params my-curate.yaml
    mavors flow run end-to-end --work-dir /data/mavors
    mavors serve                                  # local Prefect server on 127.0.0.1 + scheduled deployments
    PREFECT_API_URL=http://host:4200/api mavors deploy
    mavors ui                                     # Prefect's UI over the runs recorded under the work dir

Without ``PREFECT_API_URL`` flows run in Prefect's ephemeral mode (state under
``<work_dir>/prefect``). Prefect and the flows are imported inside the commands,
after :func:`pipelines.flows.configure_prefect` set its environment.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from pipelines.commands import no_ray_option
from pipelines.console import untruncated

console = Console()
flow_app = typer.Typer(no_args_is_help=True, help="Run one Prefect flow.")

FLOWS = {
    "curate": ("pipelines.flows.curate", "curate", "CurateParams"),
    "train": ("pipelines.flows.train", "train", "TrainParams"),
    "dpo": ("pipelines.flows.dpo_regenerate", "dpo_regenerate", "DpoParams"),
    "end-to-end": ("pipelines.flows.end_to_end", "end_to_end", "EndToEndParams"),
}


def _work_dir(work_dir: Optional[Path]) -> Path:
    if work_dir is not None:
        return work_dir
    from core.settings import load_settings

    return load_settings().work_dir


def _load_flow(name: str) -> tuple[Any, Any]:
    import importlib

    if name not in FLOWS:
        raise typer.BadParameter(f"unknown flow {name!r}; choose one of {', '.join(FLOWS)}")
    module, flow_name, params_name = FLOWS[name]
    mod = importlib.import_module(module)
    return getattr(mod, flow_name), getattr(mod, params_name)


def _params(model: Any, params_file: Optional[Path], work_dir: Optional[Path]) -> Any:
    from core.config import load_yaml, validate

    params = load_yaml(params_file, model) if params_file else validate(model, {}, "<defaults>")
    config = os.environ.get("MAVORS_CONFIG")
    update = {k: v for k, v in {"work_dir": work_dir, "config": Path(config) if config else None}.items()
              if v is not None and getattr(params, k) is None}
    return params.model_copy(update=update) if update else params


@flow_app.command("run")
def run_cmd(
    name: str = typer.Argument(..., help=f"One of: {', '.join(FLOWS)}."),
    params_file: Optional[Path] = typer.Option(None, "--params", help="YAML with the flow's parameters."),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="Overrides the settings' work dir."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Run every step (ignore Prefect's step cache)."),
    no_ray: bool = no_ray_option("Run the parallel steps"),
) -> None:
    """Run one flow (curate, train, dpo, end-to-end) in this process and print its summary."""
    from pipelines.flows import configure_prefect

    configure_prefect(_work_dir(work_dir))
    flow, model = _load_flow(name)
    params = _params(model, params_file, work_dir)
    if no_cache or no_ray:
        params = params.model_copy(update={k: False for k, off in (("use_cache", no_cache), ("use_ray", no_ray))
                                           if off})
    _print_summary(flow(params))


@flow_app.command("params")
def params_cmd(name: str = typer.Argument(..., help=f"One of: {', '.join(FLOWS)}.")) -> None:
    """Print a flow's parameters with their defaults, as YAML to start a --params file from."""
    import yaml

    _, model = _load_flow(name)
    console.print(yaml.safe_dump(model().model_dump(mode="json"), sort_keys=False), highlight=False)


def demo_cmd(
    seed: int = typer.Option(0, help="Seed of the demo corpus and the tiny models."),
) -> None:
    """The whole platform on generated demo media and tiny random models under the work dir (./mavors-work, or
    the one ``mavors --config X`` names), in minutes on 2 cores.

    The shipped demo engine configs name the tiny models as ``{work_dir}/models/...``, so any work dir works.
    The parallel steps run in this process: on the tiny corpus Ray's start-up costs more than it saves
    (results are the same); ``mavors flow run end-to-end`` afterwards runs the same flow on Ray.
    """
    from core.settings import load_settings
    from pipelines.flows import configure_prefect

    work_dir = load_settings().work_dir
    configure_prefect(work_dir)
    from pipelines.flows.end_to_end import demo

    started = time.monotonic()
    summary = demo(work_dir, seed=seed, use_ray=False)
    _print_summary(summary)
    console.print(f"demo finished in {time.monotonic() - started:.0f} s")


ALLOW_DEMO_HELP = ("Deploy against a cluster settings file even where a flow parameter is still the demo's "
                   "default (demo manifests, tiny models).")


def deploy_cmd(
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="Work dir the deployed flows use."),
    only: Optional[list[str]] = typer.Option(None, "--only", help="Deployment name (repeatable)."),
    interval: Optional[float] = typer.Option(None, "--interval", help="Seconds; replaces the cron schedules."),
    work_pool: Optional[str] = typer.Option(None, "--work-pool",
                                            help="Work pool whose workers run the flows (infra/prefect/); "
                                                 "without one, `mavors serve` must run them."),
    allow_demo: bool = typer.Option(False, "--allow-demo-defaults", help=ALLOW_DEMO_HELP),
) -> None:
    """Register the scheduled deployments on the Prefect server at PREFECT_API_URL."""
    if not os.environ.get("PREFECT_API_URL"):
        raise RuntimeError("PREFECT_API_URL is not set: start a server (`prefect server start --host 127.0.0.1`) "
                           "and export PREFECT_API_URL=http://127.0.0.1:4200/api, or use `mavors serve`")
    from pipelines.flows import configure_prefect

    configure_prefect()
    from pipelines.deployments import build_deployments

    config = os.environ.get("MAVORS_CONFIG")
    for d in build_deployments(config=Path(config) if config else None, work_dir=work_dir, only=only,
                               interval_s=interval, allow_demo_defaults=allow_demo):
        deployment_id = d.apply(work_pool_name=work_pool)
        console.print(f"registered {d.flow_name}/{d.name} ({deployment_id})")


def serve_cmd(
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="Work dir the served flows use."),
    only: Optional[list[str]] = typer.Option(None, "--only", help="Deployment name (repeatable)."),
    interval: Optional[float] = typer.Option(None, "--interval", help="Seconds; replaces the cron schedules."),
    port: Optional[int] = typer.Option(None, "--port", help="Port of the local server (default: a free one)."),
    params_file: Optional[Path] = typer.Option(None, "--params",
                                               help="YAML {deployment name: {flow parameter: value}}."),
    allow_demo: bool = typer.Option(False, "--allow-demo-defaults", help=ALLOW_DEMO_HELP),
) -> None:
    """Serve the deployments; without PREFECT_API_URL, start a Prefect server on 127.0.0.1 first.

    The deployments are built (and demo defaults refused) before any server starts, so a refusal
    leaves no server behind and costs no start-up."""
    from core.config import read_yaml
    from pipelines.flows import configure_prefect

    config = os.environ.get("MAVORS_CONFIG")
    extra = read_yaml(params_file) if params_file else None
    configure_prefect(_work_dir(work_dir))
    from pipelines.deployments import build_deployments

    deployments = build_deployments(config=Path(config) if config else None, work_dir=work_dir, only=only,
                                    interval_s=interval, parameters=extra, allow_demo_defaults=allow_demo)
    with _prefect_server(work_dir, port):
        from prefect import serve

        serve(*deployments)


def ui_cmd(
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="Work dir whose runs to show (the demo's: "
                                                                       "mavors-work)."),
    port: Optional[int] = typer.Option(None, "--port", help="Port of the server (default: a free one)."),
) -> None:
    """Prefect's UI over the flow runs recorded under a work dir (``mavors demo``'s, ``mavors flow run``'s), until Ctrl-C.

    Flows without PREFECT_API_URL run in Prefect's ephemeral mode with their database in
    ``<work_dir>/prefect``; this starts a server on that database, so the UI lists those runs.
    """
    if os.environ.get("PREFECT_API_URL"):
        from pipelines.deployments import ui_url

        console.print(f"the runs are on the server at PREFECT_API_URL: open {ui_url(os.environ['PREFECT_API_URL'])}")
        return
    with _prefect_server(work_dir, port):
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


@contextlib.contextmanager
def _prefect_server(work_dir: Optional[Path], port: Optional[int]) -> Iterator[str]:
    """The API URL to use: PREFECT_API_URL's, else a server started on 127.0.0.1 over ``<work_dir>/prefect``.

    Prints the UI's address and the ``export`` another shell needs to reach the same server. A SIGTERM
    (a service manager's stop) ends the command like Ctrl-C, so the server it started goes with it.
    """
    from pipelines.flows import configure_prefect

    wd = _work_dir(work_dir)
    configure_prefect(wd)
    from pipelines.deployments import start_local_server, ui_url

    server = None
    api_url = os.environ.get("PREFECT_API_URL")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if not api_url:
        wd.mkdir(parents=True, exist_ok=True)
        server, api_url = start_local_server(port, log_path=wd / "prefect-server.log")
        os.environ["PREFECT_API_URL"] = api_url
        console.print(f"Prefect server on 127.0.0.1 (log: {wd / 'prefect-server.log'})")
    # soft_wrap: a URL cut at the terminal's width cannot be copied
    console.print(f"Prefect UI: {ui_url(api_url)}  (deployments: {ui_url(api_url)}/deployments, "
                  f"runs: {ui_url(api_url)}/runs)", soft_wrap=True)
    console.print(f"in another shell: export PREFECT_API_URL={api_url}", highlight=False, soft_wrap=True)
    try:
        yield api_url
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def _print_summary(summary: Any) -> None:
    """A flow's summary: ``{"steps": [{step, seconds, ...}], "locations": {name: path}, ...}``."""
    if not isinstance(summary, dict):
        console.print(summary)
        return
    for title, rows in summary.get("tables", {}).items():
        if not rows:
            continue
        table = Table(title=title)
        for col in rows[0]:
            table.add_column(str(col))
        for row in rows:
            table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))
        console.print(untruncated(table))
    for name, path in summary.get("locations", {}).items():
        console.print(f"{name:>12}: {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(flow_app, name="flow")
    app.command("demo")(demo_cmd)
    app.command("deploy")(deploy_cmd)
    app.command("serve")(serve_cmd)
    app.command("ui")(ui_cmd)
