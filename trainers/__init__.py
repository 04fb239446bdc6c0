"""Training stages (1, 1.5, 2, DPO) on DeepSpeed ZeRO-2: specs, optimizer groups, loops, launch.

Entry points for other areas (flows call these; none imports Prefect):

    from trainers.chain import run_chain            # stages in order, skip finished, resume interrupted
    records = run_chain(["stage1", "stage1_5", "stage2", "dpo"], Path("manifests/stages"),
                        run_dir=settings.dir("train") / "paper", work_dir=settings.work_dir,
                        launch=Launch(hostfile=...),              # default: one process here
                        data_overrides={"dpo": {"shards": "dpo/<pair set>/shards"}},
                        on_stage=lambda status, rec: record_stage(cat, run_dir, rec))
    from trainers.stage import run_stage            # one stage in this process (one rank)
    from trainers.export import is_exported, read_stage_record

Per stage, under ``<run dir>/<stage>/``: ``metrics.jsonl``, ``checkpoints/`` (DeepSpeed, resumable),
``export/`` (``save_pretrained`` model + processor + ``stage.json``), ``launcher.log`` (multi-process).
"""
