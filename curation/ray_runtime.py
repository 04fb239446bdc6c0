"""Start or join Ray: a cluster address from settings or ``RAY_ADDRESS``, else a local instance.

Every parallel step calls :func:`ensure_ray` first; it is a no-op once Ray runs,
so tests start Ray once per session and flows share one instance.
"""
from __future__ import annotations

import os

from curation.settings import RaySettings


def ensure_ray(settings: RaySettings | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    settings = settings or RaySettings()
    address = settings.address or os.environ.get("RAY_ADDRESS")
    # Workers import the project from the driver's environment (editable install
    # locally; the cluster image or runtime_env on a cluster: infra/ray/cluster.yaml).
    if address:
        ray.init(address=address, log_to_driver=False, ignore_reinit_error=True)
    else:
        ray.init(
            num_cpus=settings.num_cpus,
            include_dashboard=False,
            object_store_memory=settings.object_store_mb * 1024 * 1024,
            log_to_driver=False,
            ignore_reinit_error=True,
        )
