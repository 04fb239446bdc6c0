-- Perplexity scores and PPL-based deduplication (paper Appendix A), written by curation/perplexity.py,
-- curation/phash.py and curation/dedup.py.

-- One score per (sample, scorer, template version, text scope). A rerun with the same key skips the sample.
CREATE TABLE ppl_scores (
    sample_id        TEXT NOT NULL,
    scorer           TEXT NOT NULL,        -- scorer name from the scorer config (e.g. qwen2vl-72b)
    template_version TEXT NOT NULL,        -- version of the LLaVA -> chat conversion (curation/perplexity.py)
    text_scope       TEXT NOT NULL,        -- answer (assistant turns only) | all (every turn's text)
    ppl              DOUBLE NOT NULL CHECK (isfinite(ppl) AND ppl >= 1.0),
    mean_nll         DOUBLE NOT NULL CHECK (isfinite(mean_nll) AND mean_nll >= 0.0),
    n_tokens         INTEGER NOT NULL CHECK (n_tokens > 0),   -- tokens the mean is over
    backend          TEXT NOT NULL,        -- transformers | vllm
    model_path       TEXT NOT NULL,
    run_id           TEXT,
    created_at       TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (sample_id, scorer, template_version, text_scope)
);

-- Perceptual signatures of media (optional near-duplicate grouping, curation/phash.py): a 16x16 RGB
-- thumbnail per image, one per sampled frame for videos (uint8 bytes, frames concatenated in time order).
CREATE TABLE media_signatures (
    media_hash  TEXT NOT NULL,
    method      TEXT NOT NULL,             -- thumb16-f<frames>: thumbnail size and frames sampled
    kind        TEXT NOT NULL,             -- image | video
    n_frames    INTEGER NOT NULL,
    signature   BLOB NOT NULL,             -- n_frames * 16 * 16 * 3 bytes
    created_at  TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (media_hash, method)
);

-- Near-duplicate clusters: each media maps to the smallest media_hash of its cluster (itself if alone).
-- Rebuilt as a whole by `mavors dedup phash`, keyed by the threshold it was built with.
CREATE TABLE media_clusters (
    media_hash   TEXT NOT NULL,
    max_distance INTEGER NOT NULL,         -- threshold used to link media: largest thumbnail value
                                           -- difference, 0-255 scale (curation/phash.py)
    cluster_key  TEXT NOT NULL,
    PRIMARY KEY (media_hash, max_distance)
);

-- The group each sample falls in for a policy run: identical media (ordered tuple of media hashes)
-- or near-identical media (ordered tuple of cluster keys).
-- One row per (policy, sample): a policy run deletes its rows and inserts one per sample, in one
-- transaction. No PRIMARY KEY on purpose: the uniqueness holds by construction, and maintaining a
-- 10M-entry ART index made the insert slower than the whole policy query.
CREATE TABLE dedup_decisions (
    policy           TEXT NOT NULL,        -- policy name from the YAML
    sample_id        TEXT NOT NULL,
    source           TEXT NOT NULL,
    task             TEXT NOT NULL,
    group_key        TEXT,                 -- NULL for samples without media
    group_size       INTEGER NOT NULL,     -- samples of the same task in the group
    rule             TEXT NOT NULL,        -- keep_k_lowest | random_one_of_k_lowest | keep_all
    k                INTEGER,
    rank             INTEGER,              -- 1 = lowest PPL in (group, task); ties by sample_id; NULL unscored
    ppl              DOUBLE,
    kept             BOOLEAN NOT NULL,
    reason           TEXT NOT NULL,        -- see curation/dedup.py REASONS
    seed             BIGINT NOT NULL,
    grouping         TEXT NOT NULL,        -- exact | phash
    scorer           TEXT NOT NULL,
    template_version TEXT NOT NULL,
    text_scope       TEXT NOT NULL,
    run_id           TEXT,
    created_at       TIMESTAMP DEFAULT current_timestamp
);
