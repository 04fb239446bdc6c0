-- Stage mixtures (manifests/mixtures/*.yaml), the samples each one drew, the media transcoded for shards,
-- and the WebDataset shards written from them. Written by curation/mixtures.py and curation/shards/.
-- Trace of a shard sample: shards.name -> mixture_members (mixture, stage, source, dedup decision)
-- -> samples / dedup_decisions.

-- One row per selected mixture; a mixture is selected once per config (config_sha256), reruns reuse it.
CREATE TABLE mixtures (
    name          TEXT PRIMARY KEY,        -- mixture `name` from the YAML
    config        JSON NOT NULL,           -- the validated config, as selected
    config_sha256 TEXT NOT NULL,           -- hash of the sampling part of the config (sources, seed, policy)
    manifest_path TEXT,
    seed          BIGINT NOT NULL,
    dedup_policy  TEXT,                    -- dedup_decisions.policy used as the filter; NULL: none existed
    run_id        TEXT,
    created_at    TIMESTAMP DEFAULT current_timestamp
);

-- Requested vs available per source entry of a stage: the table a data engineer reads first.
CREATE TABLE mixture_sources (
    mixture         TEXT NOT NULL,
    stage           TEXT NOT NULL,         -- 1 | 1.5 | 2 | dpo
    entry           INTEGER NOT NULL,      -- position of the entry in the stage's source list
    source          TEXT NOT NULL,
    tasks           TEXT[],                -- task filter; NULL: every task
    requested       TEXT NOT NULL,         -- as written: a count, 'all', or a ratio
    available       BIGINT NOT NULL,       -- eligible samples (kept by dedup, not quarantined, not held out)
    selected        BIGINT NOT NULL,
    status          TEXT NOT NULL,         -- ok | short (fewer than requested) | absent (source not in catalog)
    PRIMARY KEY (mixture, stage, entry)
);

-- Which samples a mixture drew, per stage, and why they were eligible.
CREATE TABLE mixture_members (
    mixture      TEXT NOT NULL,
    stage        TEXT NOT NULL,
    sample_id    TEXT NOT NULL,
    source       TEXT NOT NULL,
    task         TEXT NOT NULL,
    entry        INTEGER NOT NULL,         -- mixture_sources.entry that drew it
    draw_key     TEXT NOT NULL,            -- md5('<seed>:<sample_id>'): the seeded draw order
    dedup_policy TEXT,                     -- with dedup_reason: the dedup_decisions row (policy, sample_id) that kept it
    dedup_reason TEXT,
    shard        TEXT,                     -- shard planned to hold it (set by the shard build); NULL: not sharded yet
    PRIMARY KEY (mixture, stage, sample_id)
);

-- Media prepared for shards: videos transcoded to the model's fixed fps with a short GOP, images checked.
CREATE TABLE shard_media (
    media_hash  TEXT NOT NULL,             -- media.media_hash of the original
    profile     TEXT NOT NULL,             -- transcode profile id (fps, gop, codec, quality) it was made with
    path        TEXT NOT NULL,             -- the file whose bytes go into shards
    ext         TEXT NOT NULL,             -- extension inside the shard (mp4, jpg, png, ...)
    sha256      TEXT NOT NULL,
    bytes       BIGINT NOT NULL,
    kind        TEXT NOT NULL,             -- image | video
    width       INTEGER,
    height      INTEGER,
    fps         DOUBLE,
    n_frames    INTEGER,
    duration_s  DOUBLE,
    codec       TEXT,
    run_id      TEXT,
    PRIMARY KEY (media_hash, profile)
);

-- A completed shard (the file was fsynced and renamed to its final name before this row was written).
CREATE TABLE shards (
    mixture    TEXT NOT NULL,              -- mixture name, or the record set name for generic records (DPO)
    stage      TEXT NOT NULL,
    name       TEXT NOT NULL,              -- file name, e.g. demo-s2-000003.tar
    path       TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    n_samples  INTEGER NOT NULL,
    bytes      BIGINT NOT NULL,
    run_id     TEXT,
    created_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (mixture, stage, name)
);
