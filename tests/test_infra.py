"""Cluster files parse with the tools that consume them: Ray's cluster-config validator, a Dockerfile reader."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from core.paths import REPO_ROOT as ROOT


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, joining backslash continuations and dropping comments."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        current += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            logical.append(current)
            current = ""
    assert not current, f"{path}: dangling line continuation"
    out = []
    for line in logical:
        m = re.match(r"^([A-Za-z]+)\s+(.*)$", line)
        assert m, f"{path}: cannot parse {line!r}"
        out.append((m.group(1).upper(), m.group(2)))
    return out


def test_dockerfile_parses_and_installs_the_project_with_the_gpu_extra():
    instructions = dockerfile_instructions(ROOT / "infra" / "docker" / "Dockerfile")
    known = {"FROM", "RUN", "ENV", "WORKDIR", "COPY", "VOLUME", "CMD", "ARG", "LABEL", "ENTRYPOINT", "EXPOSE"}
    assert {i for i, _ in instructions} <= known
    assert instructions[0][0] == "FROM" and "cuda" in instructions[0][1]
    runs = " ".join(a for i, a in instructions if i == "RUN")
    assert re.search(r'pip install (-e )?"\.\[gpu\]"', runs), "the image must install this project with [gpu]"
    copied = {a.split()[0] for i, a in instructions if i == "COPY"}
    # every package the project declares is copied into the image
    assert {"curation", "model", "trainers", "pipelines", "manifests", "pyproject.toml"} <= copied


def test_ray_cluster_yaml_passes_rays_validator():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "infra" / "ray" / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # raises on a schema error
    assert config["head_node_type"] == "head"
    assert {"head", "gpu", "cpu"} <= set(config["available_node_types"])
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}


def test_prefect_yaml_deployments_point_at_real_flows_with_valid_parameters():
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((ROOT / "infra" / "prefect" / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    from pipelines.deployments import DEPLOYMENTS, SCHEDULES

    assert names == set(DEPLOYMENTS)  # the same deployments `mavors deploy` registers
    for dep in spec["deployments"]:
        path, _, func = dep["entrypoint"].partition(":")
        flow = load_flow_from_entrypoint(str(ROOT / path) + ":" + func)
        flow.validate_parameters(dep["parameters"])  # raises on a parameter the flow does not take
        for schedule in dep["schedules"]:
            CronSchedule(**schedule)  # Prefect's own validation of cron and timezone
        assert dep["schedules"][0]["cron"] == SCHEDULES[dep["name"]]
        assert dep["work_pool"]["name"] == "gpu-pool"


def test_ray_cluster_dashboard_is_local_and_every_node_uses_token_auth():
    config = yaml.safe_load((ROOT / "infra" / "ray" / "cluster.yaml").read_text())
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in config[key]
              if "ray start" in c]
    assert len(starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ray start") for c in starts)
    assert "~/.ray/auth_token" in config["file_mounts"]  # the token every node's `ray start` reads


def test_no_service_is_bound_to_all_interfaces_without_authentication():
    """Every mention of 0.0.0.0 in the shipped docs and cluster files comes with how it is authenticated;
    a bare `--host 0.0.0.0` (an open Prefect API or Ray dashboard runs code for anyone) is refused."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
             *sorted(p for p in (ROOT / "infra").rglob("*") if p.is_file() and p.suffix in {".md", ".yaml", ".yml",
                                                                                      ".sh", ".toml", ""})]
    bare = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in files
            for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
            if "0.0.0.0" in line and "auth" not in line.lower()]
    assert not bare, "bound to all interfaces without authentication:\n" + "\n".join(bare)
