"""How a stage is started: in this process (embedded default) or by the ``deepspeed`` launcher with a hostfile.

    launch = Launch(hostfile=Path("infra/deepspeed/hostfile"), master_addr="10.0.0.1")
    cmd = deepspeed_command(Path("manifests/stages/stage2.yaml"), run_dir, work_dir, launch)
    # on every node:  deepspeed --hostfile H --no_ssh --node_rank N --master_addr A --master_port P \\
    #                     --module trainers.stage --spec ... --run-dir ...

The world size comes from the hostfile, read with DeepSpeed's own parser, so the
batch arithmetic is checked against exactly what the launcher will start.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Launch:
    """Where a stage runs. Default: one process here (no launcher)."""

    hostfile: Path | None = None
    """MPI-style hostfile (``worker-0 slots=8``); None: this machine only."""
    procs_per_node: int = 1
    """Processes on this machine when there is no hostfile."""
    master_addr: str = "127.0.0.1"
    """Address of node 0 (rendezvous)."""
    master_port: int = 29500
    """Rendezvous port."""
    no_ssh: bool = True
    """Start each node's processes locally (run the same command on every node with its ``node_rank``)
    instead of DeepSpeed's pdsh/ssh fan-out from node 0."""
    node_rank: int = 0
    """This node's index in the hostfile (with ``no_ssh``)."""

    @property
    def in_process(self) -> bool:
        return self.hostfile is None and self.procs_per_node == 1


def hostfile_slots(hostfile: Path) -> dict[str, int]:
    """``{host: slots}`` parsed by DeepSpeed's launcher code (its errors name bad lines)."""
    from deepspeed.launcher.runner import fetch_hostfile

    if not Path(hostfile).is_file():
        raise FileNotFoundError(f"hostfile {hostfile} does not exist")
    pool = fetch_hostfile(str(hostfile))
    if not pool:
        raise ValueError(f"hostfile {hostfile} lists no hosts")
    return dict(pool)


def world_size(launch: Launch) -> int:
    """Ranks the launch starts in total."""
    if launch.hostfile is None:
        return launch.procs_per_node
    return sum(hostfile_slots(launch.hostfile).values())


def deepspeed_command(spec_path: Path, run_dir: Path, work_dir: Path, launch: Launch,
                      stage_args: tuple[str, ...] = ()) -> list[str]:
    """The ``deepspeed`` command line that starts ``trainers.stage`` for one spec on this node."""
    cmd = [str(Path(sys.executable).with_name("deepspeed"))]
    if launch.hostfile is not None:
        cmd += ["--hostfile", str(Path(launch.hostfile).resolve())]
        if launch.no_ssh:
            cmd += ["--no_ssh", "--node_rank", str(launch.node_rank)]
    else:
        cmd += ["--num_gpus", str(launch.procs_per_node)]
    cmd += ["--master_addr", launch.master_addr, "--master_port", str(launch.master_port),
            "--module", "trainers.stage",
            "--spec", str(Path(spec_path).resolve()), "--run-dir", str(Path(run_dir).resolve()),
            "--work-dir", str(Path(work_dir).resolve()), *stage_args]
    return cmd


def run_launched(cmd: list[str], log_path: Path, cwd: Path | None = None) -> None:
    """Run a launcher command to completion, output to ``log_path``; raise naming the log on failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    with log_path.open("ab") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd or root).returncode
    if rc != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"launcher exited with {rc}; log {log_path}:\n" + "\n".join(tail))
