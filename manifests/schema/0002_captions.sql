-- Caption synthesis (paper Appendix A): raw captions from several VLMs, merged by a reasoning LLM.
-- A raw caption is keyed by what produced it, so a rerun or a changed roster computes only what is new.

CREATE TABLE captions (
    caption_id    TEXT PRIMARY KEY,        -- sha256 of (media_hash, captioner, prompt_sha256, sampling)
    media_hash    TEXT NOT NULL,
    kind          TEXT NOT NULL,           -- image | video
    captioner     TEXT NOT NULL,           -- roster name of the model (rename it when the weights change)
    model_path    TEXT NOT NULL,           -- checkpoint it ran from (informative; not part of the key)
    backend       TEXT NOT NULL,           -- transformers | vllm | mavors
    prompt_sha256 TEXT NOT NULL,           -- sha256 of the exact prompt text
    sampling      JSON NOT NULL,           -- SamplingParams.as_dict()
    text          TEXT NOT NULL,
    finish_reason TEXT NOT NULL,           -- stop | length
    n_tokens      INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('ok', 'rejected')),
    reject_reason TEXT,                    -- quality gate: empty | truncated | repetition | wrong_language
    run_id        TEXT,
    created_at    TIMESTAMP DEFAULT current_timestamp
);
CREATE INDEX captions_media ON captions (media_hash);

CREATE TABLE merged_captions (
    merge_id        TEXT PRIMARY KEY,      -- sha256 of (media_hash, merger, prompt_sha256, sampling, raw caption ids)
    media_hash      TEXT NOT NULL,
    merger          TEXT NOT NULL,
    model_path      TEXT NOT NULL,
    prompt_sha256   TEXT NOT NULL,
    sampling        JSON NOT NULL,
    raw_caption_ids TEXT[] NOT NULL,       -- the captions the merger saw, in prompt order
    text            TEXT NOT NULL,         -- the merged caption, reasoning removed
    reasoning       TEXT,                  -- the merger's <think>...</think>, kept for audit
    finish_reason   TEXT NOT NULL,
    n_tokens        INTEGER NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('ok', 'rejected')),
    reject_reason   TEXT,
    run_id          TEXT,
    created_at      TIMESTAMP DEFAULT current_timestamp
);
CREATE INDEX merged_captions_media ON merged_captions (media_hash);

-- Which merged caption a synthetic caption sample (samples.source '<source>+synth') currently says.
CREATE TABLE caption_samples (
    sample_id   TEXT PRIMARY KEY,          -- '<source>+synth/<item>'
    media_hash  TEXT NOT NULL,
    from_sample TEXT NOT NULL,             -- the sample whose media was captioned
    merge_id    TEXT NOT NULL,
    updated_at  TIMESTAMP DEFAULT current_timestamp
);
