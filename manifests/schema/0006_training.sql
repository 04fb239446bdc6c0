-- Training stage runs and their exports (trainers/, `mavors train`). Written by the driver (the CLI
-- process) after each stage, never by DeepSpeed ranks. One row per (run_dir, stage); a rerun that skips
-- a finished stage leaves its row as is.
CREATE TABLE train_stages (
    run_dir        TEXT NOT NULL,          -- <work_dir>/train/<run name>
    stage          TEXT NOT NULL,          -- spec name (stage1, stage1_5, stage2, dpo, demo-...)
    spec_path      TEXT,
    spec_sha256    TEXT NOT NULL,          -- StageSpec.digest(): the export belongs to exactly this spec
    spec           JSON NOT NULL,
    init_from      TEXT,                   -- previous stage name, checkpoint path, or 'components'
    export_path    TEXT NOT NULL,          -- Hugging Face export (save_pretrained of model + processor)
    world_size     INTEGER NOT NULL,
    steps          BIGINT NOT NULL,
    samples        BIGINT NOT NULL,
    final_loss     DOUBLE,
    resumed_from_step BIGINT,              -- >0 when the stage continued from a DeepSpeed checkpoint
    init_fingerprints JSON,                -- sha256 of each module's weights at the start of the stage
    fingerprints   JSON,                   -- ... and in the export
    started_at     TIMESTAMP,
    ended_at       TIMESTAMP,
    run_id         TEXT,                   -- runs.run_id of the `mavors train` invocation
    PRIMARY KEY (run_dir, stage)
);
