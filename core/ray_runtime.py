"""Start or join Ray: a cluster address from settings or ``RAY_ADDRESS``, else a local instance.

Every parallel step calls :func:`ensure_ray` first; it is a no-op once Ray runs,
so tests start Ray once per session and flows share one instance.

Workers run in the driver's working directory (:func:`enter_driver_cwd`, a Ray worker setup
hook): engine configs and catalog rows name paths relative to it (``mavors-work/...``), and the
workers of a cluster head started elsewhere would otherwise resolve them against the head's.
A locally started Ray gets a reaper (:mod:`core.ray_reaper`) that ends its processes if the driver dies.
"""
from __future__ import annotations

import os

from core.ray_reaper import start_reaper
from core.settings import RaySettings


DRIVER_CWD = "MAVORS_DRIVER_CWD"


def enter_driver_cwd() -> None:
    """Ray worker setup hook: change into the driver's working directory when this node has it (always on
    one machine; on a cluster, when the work dir is on a filesystem every node mounts at the same path)."""
    cwd = os.environ.get(DRIVER_CWD)
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)


def ensure_ray(settings: RaySettings | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    settings = settings or RaySettings()
    address = settings.address or os.environ.get("RAY_ADDRESS")
    # Workers import the project from the driver's environment (editable install
    # locally; the cluster image or runtime_env on a cluster: infra/ray/cluster.yaml).
    runtime_env = {"env_vars": {DRIVER_CWD: os.getcwd()},
                   "worker_process_setup_hook": f"{__name__}.{enter_driver_cwd.__name__}"}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, ignore_reinit_error=True)
    else:
        context = ray.init(
            runtime_env=runtime_env,
            num_cpus=settings.num_cpus,
            include_dashboard=False,
            object_store_memory=settings.object_store_mb * 1024 * 1024,
            log_to_driver=False,
            ignore_reinit_error=True,
        )
        # Ray's agents and idle workers can outlive a SIGKILLed driver; the reaper ends them.
        start_reaper(context.address_info["session_dir"])
