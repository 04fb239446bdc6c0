-- What a shard was written from, so a rerun keeps a shard only when it still holds the planned members:
-- after quarantine rows are cleared (`mavors quarantine retry`) the plan of a stage changes while shard
-- names stay, and a file whose checksum matches its row may hold an older member list.
-- Written with every shard row (curation.shards.writer.plan_sha256); NULL for rows written before this file.

ALTER TABLE shards ADD COLUMN plan_sha256 TEXT;
COMMENT ON COLUMN shards.plan_sha256 IS 'sha256 of the records the shard was written from (member names and JSON); a rerun rewrites a shard whose plan differs';
