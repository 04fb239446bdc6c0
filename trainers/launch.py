"""How a stage is started: in this process (embedded default) or by the ``deepspeed`` launcher with a hostfile.

    launch = Launch(hostfile=Path("infra/deepspeed/hostfile"), master_addr="10.0.0.1")
    cmd = deepspeed_command(Path("manifests/stages/stage2.yaml"), run_dir, work_dir, launch)
    # on every node:  deepspeed --hostfile H --no_ssh --node_rank N --master_addr A --master_port P \\
    #                     --module trainers.stage --spec ... --run-dir ...

:class:`Launch` is the one declaration of the launch settings: ``mavors train`` builds its options
from its fields and the ``train`` flow takes it as its ``launch`` parameter. The world size comes from
the hostfile, read with DeepSpeed's own parser, so the batch arithmetic is checked against exactly
what the launcher will start.
"""
from __future__ import annotations

import sys
from pathlib import Path

from pydantic import ConfigDict, Field

from core.config import ConfigModel, ConfigPath


class Launch(ConfigModel):
    """Where a stage runs. Default: one process here (no launcher)."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    hostfile: ConfigPath | None = None
    """DeepSpeed hostfile, MPI style (``worker-0 slots=8``, see infra/deepspeed/hostfile.example); world size =
    sum of slots. Embedded: none (this machine only). Cluster: the shared hostfile, e.g. /data/mavors/hostfile."""
    procs_per_node: int = Field(1, ge=1)
    """Processes on this machine when there is no hostfile; 1 trains in one process without the launcher."""
    master_addr: str = "127.0.0.1"
    """Rendezvous address: node 0, the hostfile's first host. Embedded: 127.0.0.1. Cluster: node 0's address."""
    master_port: int = Field(29500, ge=1, le=65535)
    """Rendezvous port on node 0."""
    ssh: bool = False
    """Let DeepSpeed fan out over ssh/pdsh from node 0 (passwordless ssh to every host). Default: each node
    starts its own processes (``--no_ssh``) and the same command runs on every node with its ``node_rank``."""
    node_rank: int = Field(0, ge=0)
    """This node's 0-based line in the hostfile (without ``ssh``). Node 0's driver records the stages."""

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
        if not launch.ssh:
            cmd += ["--no_ssh", "--node_rank", str(launch.node_rank)]
    else:
        cmd += ["--num_gpus", str(launch.procs_per_node)]
    cmd += ["--master_addr", launch.master_addr, "--master_port", str(launch.master_port),
            "--module", "trainers.stage",
            "--spec", str(Path(spec_path).resolve()), "--run-dir", str(Path(run_dir).resolve()),
            "--work-dir", str(Path(work_dir).resolve()), *stage_args]
    return cmd
