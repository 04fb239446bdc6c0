"""PPL-based deduplication of samples that share media (paper, Appendix A), as DuckDB SQL over the catalog.

    mavors dedup run manifests/dedup/paper.yaml
    mavors dedup explain 'llava_qa/000123'
    mavors dedup report

Composite datasets reuse media of standalone ones, so the same image or video
appears in several samples. Samples are grouped by identical media (the ordered
tuple of content hashes of a sample's media; with ``grouping: phash``, the
ordered tuple of near-duplicate cluster keys from :mod:`curation.phash`), and
within each (group, task) a rule from the policy YAML decides:

- ``keep_k_lowest`` (QA in the paper, k=2): keep the k samples with the lowest PPL.
- ``random_one_of_k_lowest`` (captions, k=2): keep one sample picked at random
  among the k lowest-PPL ones.
- ``keep_all``: every task the policy does not name.

A synthesized caption sample (``caption_samples``: ``<source>+synth/<item>``, a new
caption of the media of sample ``from_sample``) is an alternative text of that
sample, not a duplicate of it: it stays out of the ranking and takes its origin's
decision (``origin_kept`` / ``origin_dropped``), so a mixture can draw either text of a
kept media and ranking never plays the two against each other.

Ranking: PPL ascending, ties broken by ``sample_id`` ascending (byte order), so
equal PPLs always resolve the same way. The random pick is the member of the k
lowest with the smallest ``md5('<seed>:<sample_id>')`` -- a seeded hash, not row
order, so it is reproducible from the seed and does not move when unrelated
samples are added or rows arrive in another order; only a change inside the
group's k lowest can change it.

Every sample gets a row in ``dedup_decisions`` with one of :data:`REASONS`.
Samples the scorer quarantined (media that would not decode) are dropped with
reason ``quarantined``. Unscored samples in a group that needs ranking follow
the policy's ``unscored`` setting: ``error`` (default: the run fails, nothing
written), ``keep`` (kept outside the ranking) or ``drop``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from core.catalog import Catalog
from core.config import ConfigModel, load_yaml

RuleName = Literal["keep_k_lowest", "random_one_of_k_lowest", "keep_all"]

REASONS = {
    "no_media": "kept: the sample has no media, nothing to deduplicate",
    "unique": "kept: no other sample of its task shares its media",
    "keep_all": "kept: the policy keeps every sample of this task",
    "lowest_k": "kept: among the k lowest PPL of its group",
    "above_k": "dropped: k samples of its group have a lower PPL (or equal PPL and smaller sample_id)",
    "random_pick": "kept: picked by the seeded hash among the k lowest PPL of its group",
    "not_picked": "dropped: among the k lowest PPL, but another sample was picked",
    "unscored_kept": "kept: no PPL score (policy unscored: keep), outside the ranking",
    "unscored_dropped": "dropped: no PPL score (policy unscored: drop)",
    "quarantined": "dropped: PPL scoring quarantined the sample (media failed to decode)",
    "origin_kept": "kept: a synthesized caption of a kept sample's media (caption_samples.from_sample)",
    "origin_dropped": "dropped: a synthesized caption of a sample that was dropped (or is gone)",
}


_KEPT_REASONS = ("no_media", "unique", "keep_all", "lowest_k", "random_pick", "unscored_kept", "origin_kept")


class TaskRule(ConfigModel):
    rule: RuleName
    """What to keep among samples of this task sharing media."""
    k: int = Field(2, ge=1)
    """How many lowest-PPL samples the rule looks at (paper: 2 for QA and for captions)."""


class DedupPolicy(ConfigModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Policy name; decisions are stored under it (one policy's run replaces its own rows only)."""
    scorer: str
    """Which ``ppl_scores.scorer`` to rank by (the scorer config's ``name``)."""
    template_version: str = "llava2chat-v1"
    """Which conversion template's scores to use (``curation.perplexity.TEMPLATE_VERSION``)."""
    text_scope: Literal["answer", "all"] = "answer"
    """Which scores to use: answer-token PPL or whole-text PPL."""
    seed: int = 0
    """Seed of the random pick (``md5('<seed>:<sample_id>')``)."""
    grouping: Literal["exact", "phash"] = "exact"
    """``exact``: identical media bytes. ``phash``: near-duplicate clusters (run ``mavors dedup phash`` first)."""
    phash_max_distance: int = Field(32, ge=0, le=255)
    """With ``grouping: phash``: which ``media_clusters`` build to use (largest thumbnail value difference, 0-255)."""
    unscored: Literal["error", "keep", "drop"] = "error"
    """A sample without a score in a group that needs ranking: fail the run, keep it, or drop it."""
    tasks: dict[str, TaskRule] = {}
    """Task name (``samples.task``) -> rule. Tasks not named here: ``keep_all``."""


def load_policy(path: str | Path) -> DedupPolicy:
    return load_yaml(path, DedupPolicy)


class UnscoredSamplesError(RuntimeError):
    """Samples in groups that need ranking have no PPL score and the policy says ``unscored: error``."""


def _group_key_sql(policy: DedupPolicy) -> tuple[str, str]:
    """(CTE producing sample_id -> group_key, join clause), for the policy's grouping."""
    if policy.grouping == "exact":
        return "", "array_to_string(s.media_hashes, '+')"
    # Near-duplicates: the ordered tuple of cluster keys of the sample's media.
    cte = f"""
    sample_media AS (
        SELECT sample_id, unnest(media_hashes) AS media_hash, generate_subscripts(media_hashes, 1) AS i
        FROM samples
    ),
    phash_groups AS (
        SELECT m.sample_id,
               string_agg(coalesce(c.cluster_key, '!missing'), '+' ORDER BY m.i) AS group_key,
               bool_or(c.cluster_key IS NULL) AS missing
        FROM sample_media m
        LEFT JOIN media_clusters c ON c.media_hash = m.media_hash AND c.max_distance = {policy.phash_max_distance}
        GROUP BY m.sample_id
    ),"""
    return cte, "pg.group_key"


def decisions_sql(policy: DedupPolicy) -> str:
    """The SELECT that yields one decision row per sample (parameters: scorer, template, scope, seed)."""
    group_cte, group_expr = _group_key_sql(policy)
    phash_join = "LEFT JOIN phash_groups pg ON pg.sample_id = s.sample_id" if policy.grouping == "phash" else ""
    return f"""
    WITH {group_cte}
    base AS (
        SELECT s.sample_id, s.source, s.task,
               CASE WHEN len(s.media_hashes) = 0 THEN NULL ELSE {group_expr} END AS group_key,
               p.ppl,
               q.item IS NOT NULL AS quarantined,
               coalesce(r.rule, 'keep_all') AS rule,
               r.k
        FROM samples s
        {phash_join}
        LEFT JOIN ppl_scores p
               ON p.sample_id = s.sample_id AND p.scorer = $scorer
              AND p.template_version = $template AND p.text_scope = $scope
        LEFT JOIN (SELECT DISTINCT source, item FROM quarantine WHERE stage = 'ppl') q
               ON q.source = s.source AND q.item = s.item
        LEFT JOIN _dedup_rules r ON r.task = s.task
        WHERE NOT EXISTS (SELECT 1 FROM caption_samples c WHERE c.sample_id = s.sample_id)
    ),
    ranked AS MATERIALIZED (
        -- One sort per (group, task): eligible (scored, not quarantined) first, by PPL then sample_id,
        -- so row_number() is the rank among eligible members.
        SELECT *,
               count(*) OVER (PARTITION BY group_key, task) AS group_size,
               row_number() OVER (PARTITION BY group_key, task ORDER BY eligible DESC, ppl, sample_id) AS pos
        FROM (SELECT *, ppl IS NOT NULL AND NOT quarantined AS eligible FROM base)
    ),
    picks AS (
        -- The random pick of each (group, task): smallest seeded hash among its k lowest.
        SELECT arg_min(sample_id, md5(CAST($seed AS VARCHAR) || ':' || sample_id)) AS sample_id
        FROM ranked
        WHERE rule = 'random_one_of_k_lowest' AND eligible AND pos <= k AND group_size > 1
        GROUP BY group_key, task
    ),
    decided AS (
        SELECT sample_id, source, task, group_key, CAST(group_size AS INTEGER) AS group_size, rule,
               k, CASE WHEN eligible THEN CAST(pos AS INTEGER) END AS rank, ppl,
               CASE
                   WHEN quarantined THEN 'quarantined'
                   WHEN group_key IS NULL THEN 'no_media'
                   WHEN group_size = 1 THEN 'unique'
                   WHEN rule = 'keep_all' THEN 'keep_all'
                   WHEN ppl IS NULL THEN $unscored
                   WHEN pos > k THEN 'above_k'
                   WHEN rule = 'keep_k_lowest' THEN 'lowest_k'
                   WHEN sample_id IN (SELECT sample_id FROM picks) THEN 'random_pick'
                   ELSE 'not_picked'
               END AS reason
        FROM ranked
    )
    SELECT * FROM decided
    UNION ALL
    -- synthesized captions: their origin's group and decision, their own score, no rank
    SELECT s.sample_id, s.source, s.task, o.group_key, o.group_size, o.rule, o.k, NULL AS rank, p.ppl,
           CASE WHEN o.reason IN ({", ".join(f"'{r}'" for r in _KEPT_REASONS)}) THEN 'origin_kept'
                ELSE 'origin_dropped' END AS reason
    FROM samples s
    JOIN caption_samples c ON c.sample_id = s.sample_id
    LEFT JOIN decided o ON o.sample_id = c.from_sample
    LEFT JOIN ppl_scores p
           ON p.sample_id = s.sample_id AND p.scorer = $scorer
          AND p.template_version = $template AND p.text_scope = $scope
    """


def run_policy(cat: Catalog, policy: DedupPolicy, run_id: str | None = None) -> dict[str, Any]:
    """Decide every sample under ``policy`` and replace the policy's rows in ``dedup_decisions`` atomically.

    Returns counts per reason. Raises :class:`UnscoredSamplesError` (nothing written) when samples
    that need ranking lack a score and the policy says ``unscored: error``; raises ``ValueError`` when
    ``grouping: phash`` but clusters were not built for some media.
    """
    import pyarrow as pa

    rules = pa.table({
        "task": list(policy.tasks),
        "rule": [r.rule for r in policy.tasks.values()],
        "k": pa.array([None if r.rule == "keep_all" else r.k for r in policy.tasks.values()], pa.int32()),
    }, schema=pa.schema([("task", pa.string()), ("rule", pa.string()), ("k", pa.int32())]))
    unscored_marker = {"error": "unscored", "keep": "unscored_kept", "drop": "unscored_dropped"}[policy.unscored]
    params = {"scorer": policy.scorer, "template": policy.template_version, "scope": policy.text_scope,
              "seed": policy.seed, "unscored": unscored_marker}
    kept_list = ", ".join(f"'{r}'" for r in _KEPT_REASONS)
    with cat.transaction() as con:
        con.register("_dedup_rules", rules)
        try:
            if policy.grouping == "phash":
                _check_clusters(con, policy)
            con.execute("DELETE FROM dedup_decisions WHERE policy = ?", [policy.name])
            con.execute(f"""
                INSERT INTO dedup_decisions BY NAME
                SELECT d.*, d.reason IN ({kept_list}) AS kept,
                       $policy AS policy, $seed AS seed, $grouping AS grouping, $scorer AS scorer,
                       $template AS template_version, $scope AS text_scope, $run_id AS run_id
                FROM ({decisions_sql(policy)}) d
            """, {**params, "policy": policy.name, "grouping": policy.grouping, "run_id": run_id})
            counts = dict(con.execute(
                "SELECT reason, count(*) FROM dedup_decisions WHERE policy = ? GROUP BY reason ORDER BY reason",
                [policy.name]).fetchall())
            if counts.get("unscored"):
                examples = [r[0] for r in con.execute(
                    "SELECT sample_id FROM dedup_decisions WHERE policy = ? AND reason = 'unscored' "
                    "ORDER BY sample_id LIMIT 5", [policy.name]).fetchall()]
                raise UnscoredSamplesError(
                    f"policy {policy.name}: {counts['unscored']} samples in duplicate groups have no PPL score "
                    f"for scorer={policy.scorer!r} template={policy.template_version!r} "
                    f"scope={policy.text_scope!r} (e.g. {', '.join(examples)}); run `mavors ppl score` first "
                    "or set `unscored: keep|drop` in the policy")
        finally:
            con.unregister("_dedup_rules")
    return counts


def _check_clusters(con, policy: DedupPolicy) -> None:
    missing = con.execute(
        "SELECT count(DISTINCT h) FROM (SELECT unnest(media_hashes) AS h FROM samples) m "
        "WHERE NOT EXISTS (SELECT 1 FROM media_clusters c WHERE c.media_hash = m.h AND c.max_distance = ?)",
        [policy.phash_max_distance]).fetchone()[0]
    if missing:
        raise ValueError(
            f"policy {policy.name}: grouping: phash, but {missing} media have no near-duplicate cluster at "
            f"max_distance={policy.phash_max_distance}; run `mavors dedup phash --max-distance "
            f"{policy.phash_max_distance}` first")


# -- explain and report ------------------------------------------------------------------------

def resolve_policy_name(cat: Catalog, policy: str | None) -> str:
    names = [r["policy"] for r in cat.query("SELECT DISTINCT policy FROM dedup_decisions ORDER BY policy")]
    if policy is not None:
        if policy not in names:
            raise ValueError(f"no dedup decisions for policy {policy!r} (have: {', '.join(names) or 'none'})")
        return policy
    if not names:
        raise ValueError("no sample is decided yet: no `mavors dedup run` has recorded decisions in this catalog")
    if len(names) != 1:
        raise ValueError(f"name the policy: decisions exist for {', '.join(names)}")
    return names[0]


def explain(cat: Catalog, sample_id: str, policy: str | None = None) -> dict[str, Any]:
    """The decision for one sample and the members of its (group, task), ordered by rank.

    An id the catalog does not know and a sample not decided yet fail with different messages: the first is a
    typo (or a refused item), the second wants another ``mavors dedup run``.
    """
    if not cat.scalar("SELECT count(*) FROM samples WHERE sample_id = ?", [sample_id]):
        source, _, item = sample_id.partition("/")
        refused = cat.query("SELECT stage, reason FROM quarantine WHERE source = ? AND item = ? ORDER BY stage, reason",
                            [source, item])
        reasons = ", ".join(f"{r['stage']} {r['reason']}" for r in refused)
        why = (f": it was quarantined ({reasons})" if refused
               else " (sample ids are '<source>/<item>'; see mavors catalog query)")
        raise ValueError(f"sample {sample_id!r} is not in the catalog {cat.path}{why}")
    name = resolve_policy_name(cat, policy)
    rows = cat.query("SELECT * FROM dedup_decisions WHERE policy = ? AND sample_id = ?", [name, sample_id])
    if not rows:
        raise ValueError(f"sample {sample_id!r} is not decided yet under policy {name!r}: it was ingested after the "
                         "last `mavors dedup run`; run it again")
    decision = rows[0]
    members = []
    if decision["group_key"] is not None:
        members = cat.query(
            "SELECT sample_id, source, rank, ppl, kept, reason FROM dedup_decisions "
            "WHERE policy = ? AND group_key = ? AND task = ? ORDER BY rank NULLS LAST, sample_id",
            [name, decision["group_key"], decision["task"]])
    other_tasks = cat.query(
        "SELECT task, count(*) AS n FROM dedup_decisions WHERE policy = ? AND group_key = ? AND task <> ? "
        "GROUP BY task ORDER BY task", [name, decision["group_key"], decision["task"]]
    ) if decision["group_key"] is not None else []
    return {"decision": decision, "why": REASONS.get(decision["reason"], decision["reason"]),
            "members": members, "other_tasks": other_tasks}


def format_explanation(info: dict[str, Any]) -> str:
    d = info["decision"]
    lines = [
        f"{d['sample_id']}: {'KEPT' if d['kept'] else 'DROPPED'} ({d['reason']}) under policy {d['policy']}",
        f"  why:   {info['why']}",
        f"  task:  {d['task']}  rule: {d['rule']}" + (f" k={d['k']}" if d["k"] is not None else "")
        + f"  seed: {d['seed']}  grouping: {d['grouping']}",
        f"  group: {d['group_key'] or '(no media)'}  ({d['group_size']} samples of this task)",
        f"  scorer: {d['scorer']} / {d['template_version']} / {d['text_scope']}",
    ]
    if info["members"]:
        lines.append("  rank  ppl          kept  reason        sample")
        for m in info["members"]:
            rank = "-" if m["rank"] is None else str(m["rank"])
            ppl = "-" if m["ppl"] is None else f"{m['ppl']:.4f}"
            mark = "*" if m["sample_id"] == d["sample_id"] else " "
            lines.append(f" {mark}{rank:>4}  {ppl:<11}  {'yes' if m['kept'] else 'no ':<4}  "
                         f"{m['reason']:<12}  {m['sample_id']}")
    for t in info["other_tasks"]:
        lines.append(f"  (also {t['n']} sample(s) of task {t['task']} share this media; ranked separately)")
    return "\n".join(lines)


def report(cat: Catalog, out_dir: str | Path, policy: str | None = None) -> dict[str, Any]:
    """Groups, kept/dropped per source and task, reasons; writes ``report.json`` and ``ppl_histogram.png``."""
    name = resolve_policy_name(cat, policy)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = cat.query(
        "SELECT count(*) AS groups, count(*) FILTER (WHERE n > 1) AS shared_groups, "
        "coalesce(sum(n) FILTER (WHERE n > 1), 0) AS samples_in_shared_groups, coalesce(max(n), 0) AS largest "
        "FROM (SELECT group_key, count(*) AS n FROM dedup_decisions WHERE policy = ? AND group_key IS NOT NULL "
        "AND reason NOT LIKE 'origin_%' GROUP BY group_key)", [name])[0]  # a re-caption is no duplicate
    by_source_task = cat.query(
        "SELECT source, task, count(*) FILTER (WHERE kept) AS kept, count(*) FILTER (WHERE NOT kept) AS dropped "
        "FROM dedup_decisions WHERE policy = ? GROUP BY source, task ORDER BY source, task", [name])
    reasons = cat.query("SELECT reason, kept, count(*) AS n FROM dedup_decisions WHERE policy = ? "
                        "GROUP BY reason, kept ORDER BY reason", [name])
    result = {"policy": name, **{k: int(v) for k, v in groups.items()},
              "by_source_task": by_source_task, "reasons": reasons,
              "histogram": str(out / "ppl_histogram.png")}
    _ppl_histogram(cat, name, out / "ppl_histogram.png")
    (out / "report.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _ppl_histogram(cat: Catalog, policy: str, path: Path) -> None:
    """Histogram of log10(PPL), kept vs dropped, per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = cat.con.execute("SELECT task, kept, ppl FROM dedup_decisions WHERE policy = ? AND ppl IS NOT NULL",
                           [policy]).fetchnumpy()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if len(rows["ppl"]):
        log_ppl = np.log10(rows["ppl"])
        bins = np.histogram_bin_edges(log_ppl, bins=min(60, max(10, len(log_ppl) // 20)))
        for task in sorted(set(rows["task"])):
            for kept in (True, False):
                sel = (rows["task"] == task) & (rows["kept"] == kept)
                if sel.any():
                    ax.hist(log_ppl[sel], bins=bins, alpha=0.55, label=f"{task} {'kept' if kept else 'dropped'}")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no scored samples", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("log10(PPL)")
    ax.set_ylabel("samples")
    ax.set_title(f"PPL of scored samples, policy {policy}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
