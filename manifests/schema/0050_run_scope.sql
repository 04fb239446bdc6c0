-- What a run wrote, so that a run's report shows its own rows (pipelines/report): the ingest tables carry
-- the run that wrote each row, like every later table already does, and a run records the run it ran
-- inside (the parts of an end-to-end flow, a command started by another), so a report also takes in its
-- subflows' rows.

ALTER TABLE runs ADD COLUMN parent_run_id TEXT;
ALTER TABLE sources ADD COLUMN run_id TEXT;
ALTER TABLE media ADD COLUMN run_id TEXT;
ALTER TABLE samples ADD COLUMN run_id TEXT;

COMMENT ON COLUMN runs.parent_run_id IS 'runs.run_id this run ran inside (an end-to-end flow''s part); NULL: a top-level run';
COMMENT ON COLUMN sources.run_id IS 'runs.run_id that registered (or last re-registered) the source';
COMMENT ON COLUMN media.run_id IS 'runs.run_id that first ingested the file';
COMMENT ON COLUMN samples.run_id IS 'runs.run_id that ingested the sample (or rewrote it after a change)';
