-- Views for the questions a data engineer asks first (`mavors catalog query "SELECT * FROM training_set"`,
-- `mavors catalog describe VIEW`). Read-only summaries of the tables; nothing writes them.

-- What training reads: every mixture member in a completed shard, with the shard file and why dedup kept it.
CREATE VIEW training_set AS
SELECT mm.mixture, mm.stage, mm.sample_id, mm.source, mm.task, mm.shard, sh.path AS shard_path,
       mm.dedup_policy, mm.dedup_reason
FROM mixture_members mm
JOIN shards sh ON sh.mixture = mm.mixture AND sh.stage = mm.stage AND sh.name = mm.shard;

-- One row per sample: where it came from and what each step made of it (newest PPL score and dedup
-- verdict; `mavors catalog show SAMPLE_ID` gives every row behind these).
CREATE VIEW sample_overview AS
WITH ppl AS (
    SELECT sample_id, scorer, ppl,
           row_number() OVER (PARTITION BY sample_id ORDER BY created_at DESC, scorer, text_scope) AS newest
    FROM ppl_scores),
verdict AS (
    SELECT sample_id, policy, kept, reason,
           row_number() OVER (PARTITION BY sample_id ORDER BY created_at DESC, policy) AS newest
    FROM dedup_decisions),
drawn AS (
    SELECT sample_id, list(DISTINCT mixture || ':' || stage ORDER BY mixture || ':' || stage) AS mixtures,
           count(shard) AS n_shards
    FROM mixture_members GROUP BY sample_id),
refused AS (
    SELECT source, item, list(DISTINCT stage || ':' || reason ORDER BY stage || ':' || reason) AS reasons
    FROM quarantine GROUP BY source, item),
pairs AS (SELECT sample_id, count(*) AS n_dpo_pairs FROM dpo_pairs GROUP BY sample_id),
held AS (SELECT DISTINCT sample_id, split FROM heldout)
SELECT s.sample_id, s.source, s.item, s.task, len(s.media_hashes) AS n_media,
       ppl.scorer AS ppl_scorer, ppl.ppl,
       verdict.policy AS dedup_policy, verdict.kept AS dedup_kept, verdict.reason AS dedup_reason,
       held.split AS heldout_split,
       coalesce(drawn.mixtures, []) AS mixtures, coalesce(drawn.n_shards, 0) AS n_shards,
       coalesce(pairs.n_dpo_pairs, 0) AS n_dpo_pairs,
       coalesce(refused.reasons, []) AS quarantined
FROM samples s
LEFT JOIN ppl ON ppl.sample_id = s.sample_id AND ppl.newest = 1
LEFT JOIN verdict ON verdict.sample_id = s.sample_id AND verdict.newest = 1
LEFT JOIN drawn ON drawn.sample_id = s.sample_id
LEFT JOIN refused ON refused.source = s.source AND refused.item = s.item
LEFT JOIN pairs ON pairs.sample_id = s.sample_id
LEFT JOIN held ON held.sample_id = s.sample_id;

-- Duplicate groups side by side: one row per (policy, task, group) of two or more samples, members in rank
-- order (lowest PPL first, unscored last) with their PPL and verdict.
CREATE VIEW dedup_groups AS
SELECT policy, task, group_key, any_value(grouping) AS grouping, any_value(rule) AS rule, count(*) AS group_size,
       count(*) FILTER (WHERE kept) AS n_kept,
       list(sample_id ORDER BY rank NULLS LAST, sample_id) AS sample_ids,
       list(ppl ORDER BY rank NULLS LAST, sample_id) AS ppls,
       list(kept ORDER BY rank NULLS LAST, sample_id) AS kept,
       list(reason ORDER BY rank NULLS LAST, sample_id) AS reasons
FROM dedup_decisions
WHERE group_key IS NOT NULL
GROUP BY policy, task, group_key
HAVING count(*) > 1;
