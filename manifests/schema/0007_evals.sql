-- Evaluation: held-out sets reserved before any mixture is sampled, and results per stage.

CREATE TABLE heldout (
    family     TEXT NOT NULL,              -- image_qa | image_caption | video_qa | video_caption
    sample_id  TEXT NOT NULL,
    media_hash TEXT NOT NULL,              -- one row per media of the sample: mixtures skip every sample sharing it
    split      TEXT NOT NULL,              -- name of the held-out split (e.g. 'heldout-s0')
    seed       BIGINT NOT NULL,
    created_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (sample_id, media_hash)
);

CREATE TABLE evals (
    run_id     TEXT NOT NULL,              -- runs.run_id of the training/eval run
    stage      TEXT NOT NULL,              -- stage name (stage1, stage1_5, stage2, dpo, demo-...)
    checkpoint TEXT NOT NULL,              -- the export evaluated
    task       TEXT NOT NULL,              -- lmms-eval task name (mavors_image_qa, ...) or heldout_loss
    metric     TEXT NOT NULL,              -- accuracy, brevity_rate, rouge_l, words, termination_rate, loss, ...
    value      DOUBLE NOT NULL,
    samples    INTEGER NOT NULL,
    created_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (run_id, stage, task, metric)
);
