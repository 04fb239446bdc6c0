"""The DPO section of ``mavors catalog stats``: per pair set and domain, inputs by reason and pairs made.

    mavors catalog stats
"""
from __future__ import annotations

from core.catalog import Catalog
from curation.stats import Section, has_table


def dpo_section(cat: Catalog) -> Section | None:
    """One row per (pair set, domain, reason): inputs decided that way and the pairs they gave."""
    if not has_table(cat, "dpo_inputs"):
        return None
    rows = cat.con.execute("""
        SELECT i.pair_set_id, s.checkpoint_sha256[:12], i.domain, i.reason, count(*), sum(i.n_pairs)
        FROM dpo_inputs i JOIN dpo_pair_sets s USING (pair_set_id)
        GROUP BY ALL ORDER BY min(s.created_at), 1, 3, 4""").fetchall()
    if not rows:
        return None
    return Section("DPO pairs (inputs by domain and reason)",
                   ["pair set", "checkpoint", "domain", "reason", "inputs", "pairs"], [list(r) for r in rows])
