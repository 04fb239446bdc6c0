"""Scheduled deployments of the flows, and a local Prefect server to serve them against.

    mavors serve                          # starts a Prefect server on 127.0.0.1 if none is configured, serves all
    mavors deploy                         # registers them on the server at PREFECT_API_URL (for workers, infra/prefect)
    prefect deployment run 'curate/nightly-curation'   # in a shell with the PREFECT_API_URL serve printed
    mavors ui                             # the Prefect UI over the runs recorded under the work dir (the demo's)

Three deployments:

- ``nightly-curation`` (cron, 02:00): the ``curate`` flow; new sources/files are picked up because
  ingest skips what the catalog already holds and the step cache keys include the source files.
- ``dpo-regeneration`` (cron, 05:00, and on the event ``mavors.stage.exported`` that the ``train``
  flow emits for the Stage-2 spec the DPO parameters name): ``dpo_regenerate`` on the newest export.
- ``training`` (cron, Sundays 03:00): the ``train`` flow over the configured stages.

The defaults of the flow parameters are the demo's (demo manifests, tiny models): building the
deployments against a cluster settings file (one with a Ray address) while any parameter still
holds such a default is refused (:func:`demo_defaults`) unless the caller allows it.

Every deployment has a concurrency limit of one: two runs of the same flow never work on the same
data at once. Different flows share one catalog: each holds the file only while it reads or writes, and
waits for it when another holds it (``core.catalog.LOCK_WAIT_S``; then a step retries,
``pipelines.flows.common.is_transient``).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from core.processes import free_port

DEPLOYMENTS = ("nightly-curation", "dpo-regeneration", "training")
SCHEDULES = {"nightly-curation": "0 2 * * *", "dpo-regeneration": "0 5 * * *", "training": "0 3 * * 0"}


class DemoDefaultsError(ValueError):
    """A deployment for a cluster would run on the demo's manifests or tiny models."""


def demo_defaults(params: Any) -> list[str]:
    """The parameters of a flow's ``params`` still at a default that names the demo's data or models.

    The flows' defaults are the embedded world's: values mentioning ``demo`` or ``tiny`` (the demo
    manifests, stage specs and tiny engines). Overridden values are the user's and never listed.
    """
    found = []
    for name, field in type(params).model_fields.items():
        value = getattr(params, name)
        default = field.get_default(call_default_factory=True)
        if value == default and any(word in str(default) for word in ("demo", "tiny")):
            found.append(f"{name}={default}")
    return found


def build_deployments(*, config: Path | None = None, work_dir: Path | None = None,
                      only: list[str] | None = None, interval_s: float | None = None,
                      parameters: dict[str, dict[str, Any]] | None = None,
                      allow_demo_defaults: bool = False) -> list[Any]:
    """The deployments as Prefect ``RunnerDeployment`` objects (not yet applied or served).

    ``interval_s`` replaces every cron with an interval (local smoke runs); ``parameters`` maps a
    deployment name to extra flow parameters merged over the defaults. With a cluster settings file
    (``ray.address`` set), parameters left at the demo's defaults raise :class:`DemoDefaultsError`
    unless ``allow_demo_defaults``.
    """
    from core.settings import load_settings

    from prefect.deployments.runner import EntrypointType
    from prefect.events import DeploymentEventTrigger

    from pipelines.flows.common import code_digest
    from pipelines.flows.curate import CurateParams, curate
    from pipelines.flows.dpo_regenerate import DpoParams, dpo_regenerate
    from pipelines.flows.train import STAGE_EXPORTED, TrainParams, train

    unknown = sorted(set(only or []) - set(DEPLOYMENTS))
    if unknown:
        raise ValueError(f"unknown deployment(s) {unknown}; there are {list(DEPLOYMENTS)}")
    base = {"config": config, "work_dir": work_dir}
    extra = parameters or {}

    on_cluster = load_settings(config).ray.address is not None

    def params(model: Any, name: str) -> dict[str, Any]:
        merged = {**{k: v for k, v in base.items() if v is not None}, **extra.get(name, {})}
        validated = model.model_validate(merged)
        demo = demo_defaults(validated) if on_cluster and not allow_demo_defaults else []
        if demo:
            raise DemoDefaultsError(
                f"deployment {name!r} would run the demo's defaults ({', '.join(demo)}) against the cluster "
                f"settings {config or 'from MAVORS_CONFIG'}: set them with --params, or pass --allow-demo-defaults")
        return {"params": validated.model_dump(mode="json")}

    def when(name: str) -> dict[str, Any]:
        return {"interval": interval_s} if interval_s else {"cron": SCHEDULES[name]}

    dpo_stage = DpoParams.model_validate(extra.get("dpo-regeneration", {})).stage
    common = {"entrypoint_type": EntrypointType.MODULE_PATH, "concurrency_limit": 1,
              "version": code_digest()[:12], "tags": ["mavors"]}
    made = {
        "nightly-curation": lambda: curate.to_deployment(
            "nightly-curation", parameters=params(CurateParams, "nightly-curation"), **when("nightly-curation"),
            description="Ingest new sources, synthesize captions, score, dedup, mix and shard.", **common),
        "dpo-regeneration": lambda: dpo_regenerate.to_deployment(
            "dpo-regeneration", parameters=params(DpoParams, "dpo-regeneration"), **when("dpo-regeneration"),
            triggers=[DeploymentEventTrigger(
                name="new-stage2-export", expect={STAGE_EXPORTED},
                match={"prefect.resource.id": f"mavors.stage.{dpo_stage}"},
                parameters=params(DpoParams, "dpo-regeneration"))],
            description="Rebuild DPO pairs from the newest Stage-2 export.", **common),
        "training": lambda: train.to_deployment(
            "training", parameters=params(TrainParams, "training"), **when("training"),
            description="Train the configured stages in order, skipping finished ones.", **common),
    }
    return [made[name]() for name in (only or DEPLOYMENTS)]


# -- a local Prefect server ----------------------------------------------------------------------------
def wait_healthy(api_url: str, timeout_s: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``<api>/health`` until the server answers; fail early if its process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the Prefect server at {api_url} did not become healthy within {timeout_s:.0f} s")


def ui_url(api_url: str) -> str:
    """The UI's address on a Prefect server: its API URL without the ``/api`` suffix."""
    return api_url.rstrip("/").removesuffix("/api")


def start_local_server(port: int | None = None, log_path: Path | None = None) -> tuple[subprocess.Popen, str]:
    """``prefect server start`` on 127.0.0.1 with its UI (schedules need a real server, not the ephemeral one).

    Returns the process and its API URL; the caller terminates the process. Its database lives in
    ``PREFECT_HOME`` (``<work_dir>/prefect`` when set by :func:`pipelines.flows.configure_prefect`, which is
    also where the ephemeral mode of ``mavors demo`` and ``mavors flow run`` records its runs). The UI is
    told the API's real port: by default it calls ``127.0.0.1:4200`` and shows nothing on any other port.
    """
    port = port or free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "true",
           "PREFECT_SERVER_UI_API_URL": api_url}
    env.pop("PREFECT_API_URL", None)
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_healthy(api_url, proc=proc)
    except BaseException:
        proc.terminate()
        raise
    return proc, api_url
