-- DPO preference pairs (paper §4 Stage 3, App. A): which policy checkpoint made them, every candidate and
-- the reason it was accepted or refused, every pair, and where the pairs were sharded.
-- A pair set is one (checkpoint content, DPO config, mixture) combination; a new checkpoint makes a new set.

CREATE TABLE dpo_pair_sets (
    pair_set_id       TEXT PRIMARY KEY,     -- sha256(checkpoint_sha256, config, mixture selection)[:16]
    checkpoint_path   TEXT NOT NULL,
    checkpoint_sha256 TEXT NOT NULL,        -- hash of the checkpoint directory's files (names + bytes)
    model_type        TEXT,                 -- config.json model_type of the checkpoint
    backend           TEXT NOT NULL,        -- engine backend the policy ran on
    judge             TEXT NOT NULL,        -- judge description (model path / mode, or the policy itself)
    config            JSON NOT NULL,        -- the DpoConfig
    mixture           TEXT,                 -- mixture name whose dpo stage gave the inputs
    mixture_sha256    TEXT,
    seed              BIGINT NOT NULL,
    previous_pair_set TEXT,                 -- the newest set of the same config and mixture before this one (lineage)
    shard_dir         TEXT,
    created_at        TIMESTAMP DEFAULT current_timestamp,
    run_id            TEXT
);

-- One row per (pair set, input) once that input is decided: the unit of work, so a rerun skips it.
CREATE TABLE dpo_inputs (
    pair_set_id  TEXT NOT NULL,
    sample_id    TEXT NOT NULL,
    domain       TEXT NOT NULL CHECK (domain IN ('qa', 'image_caption', 'video_caption')),
    n_pairs      INTEGER NOT NULL,
    reason       TEXT NOT NULL,             -- 'paired' or why not (video_too_short, judge_failed, no_valid_positive, ...)
    detail       TEXT,
    audit_path   TEXT,                      -- the shuffled video (video captions)
    extra        JSON,                      -- permutation, segment bounds, ...
    run_id       TEXT,
    created_at   TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (pair_set_id, sample_id)
);

CREATE TABLE dpo_candidates (
    pair_set_id   TEXT NOT NULL,
    sample_id     TEXT NOT NULL,
    candidate_id  TEXT NOT NULL,            -- '<pool>-<index>'
    pool          TEXT NOT NULL,            -- positive | negative (QA), sample (image captions), original | shuffled
    text          TEXT NOT NULL,
    finish_reason TEXT NOT NULL,            -- stop (EOS / stop string) | length (token limit)
    n_tokens      INTEGER,
    temperature   DOUBLE NOT NULL,
    seed          BIGINT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('chosen', 'rejected', 'valid_unused', 'refused')),
    reason        TEXT NOT NULL,            -- why accepted (correct_terminated, too_brief, ranked, ...) or refused
    detail        TEXT,
    score         DOUBLE,                   -- ranking score (image captions)
    scores        JSON,                     -- per-term scores / judge verdict
    judge         TEXT,
    PRIMARY KEY (pair_set_id, sample_id, candidate_id)
);

CREATE TABLE dpo_pairs (
    pair_id           TEXT PRIMARY KEY,     -- '<pair_set_id>/<sample_id>/<n>'
    pair_set_id       TEXT NOT NULL,
    sample_id         TEXT NOT NULL,
    domain            TEXT NOT NULL,
    prompt            JSON NOT NULL,        -- TRL conversational prompt [{"role": "user", "content": [...]}]
    chosen            TEXT NOT NULL,
    rejected          TEXT NOT NULL,
    chosen_candidate  TEXT NOT NULL,
    rejected_candidate TEXT NOT NULL,
    chosen_score      DOUBLE,
    rejected_score    DOUBLE,
    margin            DOUBLE,
    chosen_reason     TEXT NOT NULL,
    rejected_reason   TEXT NOT NULL,
    temperatures      JSON NOT NULL,        -- {"chosen": t, "rejected": t}
    seeds             JSON NOT NULL,
    judge             TEXT,
    media_hashes      TEXT[] NOT NULL,
    media_kinds       TEXT[] NOT NULL,      -- image | video, in prompt order
    media_paths       TEXT[] NOT NULL,      -- local files the prompt's media came from
    rejected_media_path TEXT,               -- video captions: the shuffled video the rejected caption saw
    checkpoint_sha256 TEXT NOT NULL,
    run_id            TEXT,
    created_at        TIMESTAMP DEFAULT current_timestamp
);
CREATE INDEX dpo_pairs_set ON dpo_pairs (pair_set_id);
