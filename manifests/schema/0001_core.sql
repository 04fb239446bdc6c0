-- Core catalog: where every sample came from, its media, what was quarantined, and which runs wrote it.
-- Later features add tables by adding a file NNNN_name.sql here; files are applied in order once each.

CREATE TABLE sources (
    name            TEXT PRIMARY KEY,      -- manifest `name`, unique across the catalog
    modality        TEXT NOT NULL,         -- image | video | mixed | text
    task            TEXT NOT NULL,         -- caption | qa | ... (default task of the source's samples)
    format          TEXT NOT NULL,         -- llava_json | caption_jsonl | caption_parquet | webdataset
    path            TEXT NOT NULL,         -- annotation file / tar glob, as resolved at ingest
    media_root      TEXT,
    license         TEXT,
    notes           TEXT,
    manifest_path   TEXT,
    manifest_sha256 TEXT,
    registered_at   TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE media (
    media_hash   TEXT PRIMARY KEY,         -- sha256 of the file bytes
    kind         TEXT NOT NULL CHECK (kind IN ('image', 'video')),
    bytes        BIGINT NOT NULL,
    width        INTEGER,
    height       INTEGER,
    duration_s   DOUBLE,                   -- videos only
    fps          DOUBLE,                   -- videos only (average rate of the stream)
    n_frames     INTEGER,                  -- videos: decoded frame count; images: 1
    codec        TEXT,                     -- video codec name, or the image format (JPEG, PNG, ...)
    storage_path TEXT NOT NULL,            -- where the bytes were first found
    created_at   TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE samples (
    sample_id    TEXT PRIMARY KEY,         -- '<source>/<item>', stable across re-ingest
    source       TEXT NOT NULL,
    item         TEXT NOT NULL,            -- id inside the source (annotation id, line, tar key)
    task         TEXT NOT NULL,            -- caption | qa | ...
    conversation JSON NOT NULL,            -- [{"from": "human"|"gpt", "value": "..."}], placeholders <image>/<video>
    media_hashes TEXT[] NOT NULL,          -- media in order of their placeholders
    stage_hints  TEXT[],                   -- stages the source manifest suggests (1, 1.5, 2, dpo)
    content_sha256 TEXT NOT NULL,          -- hash of (conversation, media_hashes): detects a changed item
    created_at   TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE quarantine (
    source     TEXT NOT NULL,
    item       TEXT NOT NULL,              -- the sample/file that was refused
    reason     TEXT NOT NULL,              -- short machine-countable reason (e.g. truncated_image)
    detail     TEXT,                       -- human-readable detail (exception text, path)
    stage      TEXT NOT NULL DEFAULT 'ingest',  -- which step refused it (ingest, captions, ppl, shards, dpo)
    run_id     TEXT,
    created_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (source, item, stage, reason)
);

CREATE TABLE runs (
    run_id       TEXT PRIMARY KEY,
    command      TEXT NOT NULL,            -- flow name or CLI command
    parameters   JSON,
    code_version TEXT,                     -- git describe of the checkout, or the package version
    started_at   TIMESTAMP DEFAULT current_timestamp,
    ended_at     TIMESTAMP,
    status       TEXT NOT NULL DEFAULT 'running',   -- running | completed | failed
    detail       TEXT
);
