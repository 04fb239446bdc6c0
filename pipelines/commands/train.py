"""``mavors train``: run training stages in order, each from the previous stage's export.

    mavors train --stages demo-stage1,demo-stage1_5,demo-stage2,demo-dpo           # embedded: 1 process, CPU
    mavors train --stages stage1,stage1_5,stage2,dpo --run cluster \\
        --hostfile infra/deepspeed/hostfile --master-addr 10.0.0.1 --node-rank 0   # on every node
    mavors train --stages stage2 --print-command --hostfile infra/deepspeed/hostfile
    mavors train --stages demo-dpo --data demo-dpo=mavors-work/dpo/<pair set>/shards   # DPO on a fresh pair set

Finished stages (with an export) are skipped; an interrupted stage resumes from its
newest DeepSpeed checkpoint. The driver records each stage in the catalog (``train_stages``).
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console()


def train_cmd(
    stages: str = typer.Option(..., help="Comma-separated stage names (files in --stages-dir)."),
    run: str = typer.Option("default", help="Run name; outputs go to <work_dir>/train/<run>/<stage>/."),
    stages_dir: Path = typer.Option(Path("manifests/stages"), help="Where the stage YAMLs live."),
    hostfile: Optional[Path] = typer.Option(None, help="DeepSpeed hostfile (multi-node); see infra/deepspeed/."),
    procs: int = typer.Option(1, help="Processes on this machine when there is no hostfile."),
    master_addr: str = typer.Option("127.0.0.1", help="Node 0's address."),
    master_port: int = typer.Option(29500, help="Rendezvous port."),
    node_rank: int = typer.Option(0, help="This node's index in the hostfile (no-ssh launch)."),
    ssh: bool = typer.Option(False, help="Let DeepSpeed fan out over ssh/pdsh from node 0 instead of --no_ssh."),
    print_command: bool = typer.Option(False, help="Print the deepspeed command per stage and exit."),
    data: Optional[list[str]] = typer.Option(None, help="STAGE=SHARD_DIR: train STAGE on these shards instead of "
                                             "its spec's data (e.g. the DPO pair set just built). Repeatable."),
) -> None:
    """Train stages in order (Stage 1 -> 1.5 -> 2 -> DPO), skipping finished ones."""
    from core.catalog import Catalog
    from core.settings import load_settings
    from trainers.chain import data_args, plan_chain, run_chain
    from trainers.launch import Launch, deepspeed_command
    from trainers.records import record_stage

    settings = load_settings()
    names = [s.strip() for s in stages.split(",") if s.strip()]
    launch = Launch(hostfile=hostfile, procs_per_node=procs, master_addr=master_addr, master_port=master_port,
                    no_ssh=not ssh, node_rank=node_rank)
    run_dir = settings.dir("train") / run
    overrides = {}
    for item in data or []:
        stage, sep, directory = item.partition("=")
        if not sep or not directory:
            raise typer.BadParameter(f"--data {item!r}: expected STAGE=SHARD_DIR")
        overrides[stage] = {"shards": directory}
    if print_command:
        for stage in plan_chain(names, stages_dir, run_dir, settings.work_dir, launch, overrides):
            cmd = deepspeed_command(stage.path, run_dir, settings.work_dir, launch, data_args(overrides, stage.name))
            console.print(shlex.join(cmd), soft_wrap=True)
        return
    if launch.node_rank != 0:  # other nodes train; node 0's driver records
        run_chain(names, stages_dir, run_dir, settings.work_dir, launch, data_overrides=overrides)
        return
    with Catalog(settings.catalog) as cat:
        run_id = cat.start_run("train", {"stages": names, "run": run, "hostfile": str(hostfile) if hostfile else None})

    def on_stage(status: str, record: dict) -> None:
        console.print(f"{record['stage']}: {status}, {record['steps']} steps, final loss {record.get('final_loss')}, "
                      f"export {record['export']}", highlight=False)
        with Catalog(settings.catalog) as cat:  # opened only between stages: ranks never hold the file
            record_stage(cat, str(run_dir), record, run_id)

    try:
        run_chain(names, stages_dir, run_dir, settings.work_dir, launch, on_stage=on_stage, data_overrides=overrides)
    except BaseException as e:
        with Catalog(settings.catalog) as cat:
            cat.finish_run(run_id, "failed", f"{type(e).__name__}: {e}")
        raise
    with Catalog(settings.catalog) as cat:
        cat.finish_run(run_id)


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
