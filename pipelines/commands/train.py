"""``mavors train``: run training stages in order, each from the previous stage's export.

    mavors train --stages demo-stage1,demo-stage1_5,demo-stage2,demo-dpo           # embedded: 1 process, CPU
    mavors train --stages stage1,stage1_5,stage2,dpo --run cluster \\
        --hostfile infra/deepspeed/hostfile --master-addr 10.0.0.1 --node-rank 0   # on every node
    mavors train --stages stage2 --print-command --hostfile infra/deepspeed/hostfile
    mavors train --stages demo-dpo --data demo-dpo=mavors-work/dpo/<pair set>/shards   # DPO on a fresh pair set

The launch options are the fields of :class:`trainers.launch.Launch` (defaults and help come from there;
the ``train`` flow takes the same model as its ``launch`` parameter). A stage whose spec names a mixture
stage trains on the folder the catalog's ``shards`` table records for it, unless ``--data`` names one.
Finished stages (with an export) are skipped; an interrupted stage resumes from its newest DeepSpeed
checkpoint. Node 0's driver records the command as one ``runs`` row and each stage in the catalog
(``train_stages``); other nodes only train, and never open the catalog (a mixture stage needs ``--data`` there).
"""
from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from trainers.launch import Launch

console = Console()


def _launch_option(field: str, *flags: str) -> Any:
    """A typer option whose default and help are those of the ``Launch`` field it sets."""
    info = Launch.model_fields[field]
    return typer.Option(info.default, *flags, help=info.description)


def train_cmd(
    stages: str = typer.Option(..., help="Comma-separated stage names (files in --stages-dir)."),
    run: str = typer.Option("default", help="Run name; outputs go to <work_dir>/train/<run>/<stage>/."),
    stages_dir: Path = typer.Option(Path("manifests/stages"), help="Where the stage YAMLs live."),
    hostfile: Optional[Path] = _launch_option("hostfile"),
    procs_per_node: int = _launch_option("procs_per_node", "--procs"),
    master_addr: str = _launch_option("master_addr"),
    master_port: int = _launch_option("master_port"),
    node_rank: int = _launch_option("node_rank"),
    ssh: bool = _launch_option("ssh"),
    print_command: bool = typer.Option(False, help="Print the deepspeed command per stage and exit."),
    data: Optional[list[str]] = typer.Option(None, help="STAGE=SHARD_DIR: train STAGE on these shards instead of "
                                             "its spec's data (e.g. the DPO pair set just built). Repeatable."),
) -> None:
    """Train stages in order (Stage 1 -> 1.5 -> 2 -> DPO), skipping finished ones."""
    from core.config import validate
    from core.settings import load_settings
    from trainers.chain import run_chain

    settings = load_settings()
    names = [s.strip() for s in stages.split(",") if s.strip()]
    launch = validate(Launch, {"hostfile": hostfile, "procs_per_node": procs_per_node, "master_addr": master_addr,
                               "master_port": master_port, "node_rank": node_rank, "ssh": ssh}, "mavors train")
    run_dir = settings.dir("train") / run
    given = data_overrides(data or [], settings.work_dir)
    if print_command:
        print_commands(names, stages_dir, run_dir, settings.work_dir, launch,
                       stage_data(settings.catalog, names, stages_dir, settings.work_dir, given))
    elif launch.node_rank != 0:  # other nodes train; node 0's driver records
        run_chain(names, stages_dir, run_dir, settings.work_dir, launch,
                  data_overrides=other_node_data(names, stages_dir, given, launch.node_rank))
    else:
        train_recorded(settings.catalog, names, run, stages_dir, run_dir, settings.work_dir, launch, given)


def data_overrides(items: list[str], work_dir: Path) -> dict[str, dict]:
    """``--data STAGE=SHARD_DIR`` values (a relative SHARD_DIR: from the current dir, as any command-line path) as
    the chain's data overrides (stage -> replacement ``data``), a folder in the work dir as ``{work_dir}/...``."""
    from core.config import work_dir_path

    overrides = {}
    for item in items:
        stage, sep, directory = item.partition("=")
        if not sep or not stage or not directory:
            raise typer.BadParameter(f"--data {item!r}: expected STAGE=SHARD_DIR")
        overrides[stage] = {"shards": work_dir_path(directory, work_dir)}
    return overrides


def stage_data(catalog: Path, names: list[str], stages_dir: Path, work_dir: Path,
               given: dict[str, dict]) -> dict[str, dict]:
    """The chain's data overrides: ``--data`` as given, and for every other stage whose spec trains on a mixture
    stage, the folder the catalog's ``shards`` table records for it (the driver resolves it; ranks are handed
    the folder). The catalog is opened read-only, and only if it exists."""
    from core.catalog import Catalog
    from curation.shards.build import recorded_stage_dirs
    from trainers.chain import mixture_data

    built = {}
    if Path(catalog).exists():
        with Catalog(catalog, read_only=True) as cat:
            built = recorded_stage_dirs(cat)
    return {**mixture_data([n for n in names if n not in given], stages_dir, built, work_dir), **given}


def other_node_data(names: list[str], stages_dir: Path, given: dict[str, dict], node_rank: int) -> dict[str, dict]:
    """Another node's data overrides: ``--data`` only. The catalog is node 0's (DuckDB lets one process open the
    file, even read-only), so a mixture stage needs the folder node 0 trains on, given as ``--data``."""
    from core.config import ConfigError
    from trainers.chain import stage_file
    from trainers.spec import load_stage

    for name in names:
        path = stage_file(stages_dir, name)
        if name not in given and load_stage(path).data.mixture is not None:
            raise ConfigError(f"{path}: field 'data.mixture': node {node_rank} does not open the catalog (node 0's "
                              f"driver holds it); pass --data {name}=DIR with the folder that "
                              "`mavors train --print-command` shows on node 0")
    return given


def print_commands(names: list[str], stages_dir: Path, run_dir: Path, work_dir: Path, launch: Launch,
                   overrides: dict[str, dict]) -> None:
    """The ``deepspeed`` command of every stage, after the chain's checks (nothing is started)."""
    from trainers.chain import data_args, plan_chain
    from trainers.launch import deepspeed_command

    for stage in plan_chain(names, stages_dir, run_dir, work_dir, launch, overrides):
        cmd = deepspeed_command(stage.path, run_dir, work_dir, launch, data_args(overrides, stage.name))
        console.print(shlex.join(cmd), soft_wrap=True)


def train_recorded(catalog: Path, names: list[str], run: str, stages_dir: Path, run_dir: Path, work_dir: Path,
                   launch: Launch, given: dict[str, dict]) -> None:
    """Node 0's driver: the chain (its data resolved first) as one ``runs`` row, each stage recorded as it
    finishes; a spec or data error fails the run with its message."""
    from core.runs import recorded_run
    from trainers.chain import run_chain

    parameters = {"stages": names, "run": run, "hostfile": str(launch.hostfile) if launch.hostfile else None}
    with recorded_run(catalog, "train", parameters) as recorded:
        overrides = stage_data(catalog, names, stages_dir, work_dir, given)
        run_chain(names, stages_dir, run_dir, work_dir, launch, data_overrides=overrides,
                  on_stage=stage_recorder(catalog, run_dir, recorded.run_id))


def stage_recorder(catalog: Path, run_dir: Path, run_id: str) -> Callable[[str, dict], None]:
    """The chain's ``on_stage``: print the stage's outcome and record it in ``train_stages``, opening the
    catalog only between stages (ranks never meet a held lock)."""
    from core.catalog import Catalog
    from trainers.records import record_stage

    def on_stage(status: str, record: dict) -> None:
        loss = record.get("final_loss")
        console.print(f"{record['stage']}: {status}, {record['steps']} steps, final loss "
                      f"{'-' if loss is None else f'{loss:.4g}'}, export {record['export']}", highlight=False)
        with Catalog(catalog) as cat:
            record_stage(cat, str(run_dir), record, run_id)
    return on_stage


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
