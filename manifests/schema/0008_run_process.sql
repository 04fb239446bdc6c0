-- Which process a run lives in, so a run whose process died (SIGKILL, OOM, power loss) is not left
-- 'running' forever: the next run on the same host marks it 'interrupted' (core.catalog.Catalog.start_run).
-- runs.status is then one of: running | completed | failed | interrupted.

ALTER TABLE runs ADD COLUMN host TEXT;     -- socket.gethostname() of the process that started the run
ALTER TABLE runs ADD COLUMN pid INTEGER;   -- its process id
