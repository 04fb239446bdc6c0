"""Stage mixtures: which samples of which sources go into a training stage (paper §4, Appendix A, Table 6).

    mavors shards build manifests/mixtures/demo-stage2.yaml      # select + transcode + shard
    python -c "from curation.mixtures import load_mixture; print(load_mixture('manifests/mixtures/paper-table6.yaml'))"

A mixture YAML lists, per stage (``1``, ``1.5``, ``2``, ``dpo``), source entries with
a sample ``count`` (an integer or ``all``) or a ``ratio`` (``0.25``, ``"25%"``,
``"1/4"``), an optional task filter, and ``captions: synthesized`` to draw the
merged captions caption synthesis wrote for the source's media (catalog source
``<source>+synth``) instead of the source's own samples. Selection is a pure function of the catalog
and the seed: a sample is *eligible* when deduplication kept it (the policy's
``dedup_decisions`` rows; with no decisions in the catalog every sample, with a
warning), it is not quarantined, and it is not held out for evaluation (a ``heldout``
table, when the eval area has created one). Eligible samples of an entry are drawn
in the order of ``md5('<seed>:<sample_id>')`` (ties by sample id) -- the same
convention as the dedup pick -- so a larger count extends a smaller one and the draw
does not move when unrelated samples are added. The draw is recorded in
``mixture_members`` with the dedup decision that admitted each sample, and a
requested-vs-available row per entry goes to ``mixture_sources``.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from core.catalog import Catalog
from core.config import ConfigModel, load_yaml
from curation.sources import synthesized_source
from curation.transcode import TranscodeConfig

Stage = Literal["1", "1.5", "2", "dpo"]
STAGES: tuple[str, ...] = ("1", "1.5", "2", "dpo")


class MixtureError(RuntimeError):
    """A mixture cannot be selected as asked (strict shortfall, conflicting reselection, unknown policy)."""


def parse_ratio(value: Any) -> float:
    """``0.25``, ``"25%"``, ``"1/4"`` or ``"0.25"`` -> 0.25; anything else is a ValueError naming the value."""
    if isinstance(value, bool):
        raise ValueError(f"ratio must be a number, a percentage or a fraction, not {value!r}")
    if isinstance(value, (int, float)):
        ratio = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            ratio = float(text[:-1]) / 100 if text.endswith("%") else float(Fraction(text))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"ratio {value!r} is not a number, a percentage ('25%') or a fraction ('1/4')") from None
    else:
        raise ValueError(f"ratio must be a number, a percentage or a fraction, not {type(value).__name__}")
    if not math.isfinite(ratio) or not 0 < ratio <= 1:
        raise ValueError(f"ratio {value!r} must lie in (0, 1] (a share of the source's eligible samples)")
    return ratio


class SourceEntry(ConfigModel):
    """One source of a stage and how much of it to draw."""

    source: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Catalog source name (the source manifest's ``name``). Cluster: e.g. ``laion_en``."""
    count: Annotated[int, Field(ge=0)] | Literal["all"] | None = None
    """Samples to draw: an integer (fewer available: all of them, reported ``short``) or ``all``
    (the paper gives no count for the dataset). Give exactly one of ``count`` and ``ratio``."""
    ratio: float | None = None
    """Share of the eligible samples to draw, ``floor(ratio * available)``: ``0.25``, ``"25%"`` or ``"1/4"``."""
    captions: Literal["original", "synthesized"] = "original"
    """``original``: the source's own samples. ``synthesized``: the merged captions caption synthesis wrote
    for the source's media (catalog source ``<source>+synth``, paper App. A: CC12M, CelebV, Hacs and
    Kinetics_700 are trained on these); they pass deduplication when the sample they re-caption does."""
    tasks: list[str] | None = None
    """Only samples whose task is in this list (``caption``, ``qa``, ...); None: every task of the source."""
    category: str | None = None
    """Table 6's task column (``Image Caption``, ``Instruction``, ...): documentation and reports only."""
    note: str | None = None
    """Free text (e.g. where the paper's count comes from)."""

    @field_validator("ratio", mode="before")
    @classmethod
    def _ratio(cls, value: Any) -> float | None:
        return None if value is None else parse_ratio(value)

    @model_validator(mode="after")
    def _one_amount(self) -> SourceEntry:
        if (self.count is None) == (self.ratio is None):
            raise ValueError(f"source {self.source!r}: give exactly one of count (an integer or 'all') and ratio")
        return self

    def catalog_source(self) -> str:
        """The ``samples.source`` this entry draws from."""
        return synthesized_source(self.source) if self.captions == "synthesized" else self.source

    def selection_key(self) -> dict[str, Any]:
        """The fields that decide the draw (``captions`` only when not the default, so mixtures written
        before it existed keep their selection hash)."""
        key = self.model_dump(exclude={"category", "note"})
        if self.captions == "original":
            del key["captions"]
        return key

    def requested(self) -> str:
        """The amount as written, for reports."""
        return str(self.count) if self.count is not None else f"ratio {self.ratio:g}"

    def take(self, available: int) -> int:
        """How many of ``available`` eligible samples this entry draws."""
        if self.count == "all":
            return available
        if self.count is not None:
            return min(self.count, available)
        return min(available, math.floor(self.ratio * available + 1e-9))


class ShardLimits(ConfigModel):
    """Bounds of one WebDataset shard; a shard closes when the next sample would cross either."""

    max_samples: int = Field(1000, ge=1)
    """Samples per shard at most. Cluster: ~1000-5000 (a few hundred MB of video per shard)."""
    max_bytes: int = Field(512 * 1024 * 1024, ge=10240)
    """Tar bytes per shard at most (a single sample larger than this gets a shard of its own)."""


class MixtureConfig(ConfigModel):
    """A named mixture: per stage, the sources to draw from; plus how to shard and transcode it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    """Mixture name: key of its catalog rows and prefix of its shard files (no dots, no slashes)."""
    description: str | None = None
    """What the mixture is for."""
    reference: str | None = None
    """Where the recipe comes from (paper table, ticket, ...)."""
    seed: int = 0
    """Seed of the draw order ``md5('<seed>:<sample_id>')``; same seed and catalog -> same selection."""
    dedup_policy: str | None = None
    """``dedup_decisions.policy`` whose kept samples are eligible. None: the only policy in the catalog,
    or no filter (with a warning) when there are no decisions."""
    stages: dict[Stage, list[SourceEntry]] = Field(min_length=1)
    """Stage (``1``, ``1.5``, ``2``, ``dpo``) -> source entries. A sample is drawn at most once per stage."""
    shards: ShardLimits = ShardLimits()
    """Shard size bounds."""
    transcode: TranscodeConfig = TranscodeConfig()
    """How videos are transcoded for the shards (fixed fps, short GOP)."""

    @model_validator(mode="before")
    @classmethod
    def _stage_keys_as_text(cls, data: Any) -> Any:
        # YAML reads `1:` as int and `1.5:` as float; stages are named by their text.
        if isinstance(data, dict) and isinstance(data.get("stages"), dict):
            data = {**data, "stages": {str(k): v for k, v in data["stages"].items()}}
        return data

    def selection_sha256(self, dedup_policy: str | None) -> str:
        """Hash of everything that decides the selection (not shard sizes or transcoding)."""
        key = {"seed": self.seed, "dedup_policy": dedup_policy,
               "stages": {s: [e.selection_key() for e in es] for s, es in self.stages.items()}}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def load_mixture(path: str | Path) -> MixtureConfig:
    """Load and validate a mixture YAML (errors name the file and the field)."""
    return load_yaml(path, MixtureConfig)


def stage_slug(stage: str) -> str:
    """Stage as it appears in file names: ``1.5`` -> ``s1_5``, ``dpo`` -> ``sdpo``."""
    return "s" + stage.replace(".", "_")


@dataclass
class EntryAvailability:
    """Requested vs available for one source entry of a stage."""

    stage: str
    entry: int
    source: str
    tasks: list[str] | None
    requested: str
    available: int
    selected: int
    status: str  # ok | short | absent


@dataclass
class Selection:
    """What :func:`select_mixture` did; ``warnings`` are for the caller to show (CLI, flow log)."""

    mixture: str
    dedup_policy: str | None
    entries: list[EntryAvailability]
    warnings: list[str] = field(default_factory=list)
    reused: bool = False

    @property
    def n_selected(self) -> int:
        return sum(e.selected for e in self.entries)

    def shortfalls(self) -> list[str]:
        """One line per entry that is absent from the catalog or short of its count."""
        return [f"stage {e.stage}: source {e.source} is {e.status} (requested {e.requested}, available "
                f"{e.available})" for e in self.entries if e.status != "ok"]

    def table(self) -> str:
        """The requested-vs-available table, one line per entry."""
        head = f"{'stage':<6} {'source':<28} {'tasks':<14} {'requested':>12} {'available':>10} {'selected':>9}  status"
        lines = [head, "-" * len(head)]
        for e in self.entries:
            tasks = ",".join(e.tasks) if e.tasks else "*"
            lines.append(f"{e.stage:<6} {e.source:<28} {tasks:<14} {e.requested:>12} {e.available:>10} "
                         f"{e.selected:>9}  {e.status}")
        return "\n".join(lines)


def _columns(cat: Catalog, table: str) -> set[str]:
    rows = cat.query("SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table])
    return {r["column_name"] for r in rows}


def resolve_dedup_policy(cat: Catalog, requested: str | None) -> tuple[str | None, list[str]]:
    """The dedup policy to filter by, and warnings. A named policy without decisions is an error."""
    policies = []
    if cat.has_table("dedup_decisions"):
        policies = [r["policy"] for r in cat.query("SELECT DISTINCT policy FROM dedup_decisions ORDER BY policy")]
    if requested is not None:
        if requested not in policies:
            raise MixtureError(f"dedup policy {requested!r} has no decisions in the catalog "
                               f"(policies with decisions: {policies or 'none'}); run `mavors dedup run` first")
        return requested, []
    if not policies:
        return None, ["no deduplication decisions in the catalog: every non-quarantined sample is eligible"]
    if len(policies) > 1:
        raise MixtureError(f"the catalog has decisions of several dedup policies {policies}; "
                           "name one in the mixture's `dedup_policy`")
    return policies[0], []


def _eligible_sql(cat: Catalog, policy: str | None) -> str:
    """FROM/WHERE clause of eligible samples of one entry (parameters: source, tasks, policy, and mixture, stage
    and entry for the exclusion of samples earlier entries drew)."""
    joins = ["FROM samples s"]
    if policy is not None:
        joins.append("JOIN dedup_decisions d ON d.sample_id = s.sample_id AND d.policy = $policy AND d.kept")
    where = [
        "s.source = $source",
        "($tasks IS NULL OR list_contains($tasks, s.task))",
        "NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.source = s.source AND q.item = s.item)",
        # drawn once per stage: not by an earlier entry of the stage (entries draw in order)
        "NOT EXISTS (SELECT 1 FROM mixture_members m WHERE m.mixture = $mixture AND m.stage = $stage"
        "            AND m.entry < $entry AND m.sample_id = s.sample_id)",
    ]
    # Held-out evaluation samples (eval area's `heldout` table) are never drawn, by id or by shared media.
    if cat.has_table("heldout"):
        cols = _columns(cat, "heldout")
        if "sample_id" in cols:
            where.append("NOT EXISTS (SELECT 1 FROM heldout h WHERE h.sample_id = s.sample_id)")
        if "media_hash" in cols:
            where.append("NOT EXISTS (SELECT 1 FROM heldout h WHERE list_contains(s.media_hashes, h.media_hash))")
    return " ".join(joins) + " WHERE " + " AND ".join(where)


def select_mixture(cat: Catalog, mixture: MixtureConfig, *, strict: bool = False, replace: bool = False,
                   manifest_path: str | Path | None = None, run_id: str | None = None) -> Selection:
    """Draw the mixture's samples and record them (one transaction); a rerun of the same config reuses them.

    ``strict``: a source absent from the catalog or an entry with fewer eligible samples
    than its count is an error (nothing is written). ``replace``: the mixture is dropped (with
    its shard rows) and redrawn from the catalog as it is now, whether or not its config changed;
    without it a changed config is an error. A reused draw reports the availability of now, with
    a warning per entry whose eligible samples changed since the draw.
    """
    policy, warnings = resolve_dedup_policy(cat, mixture.dedup_policy)
    sha = mixture.selection_sha256(policy)
    existing = cat.query("SELECT config_sha256 FROM mixtures WHERE name = ?", [mixture.name])
    if existing and existing[0]["config_sha256"] != sha and not replace:
        raise MixtureError(f"mixture {mixture.name!r} was selected with a different config; "
                           "rename it or pass --replace to redraw it (its shard rows are dropped)")
    eligible = _eligible_sql(cat, policy)
    known_sources = {r["name"] for r in cat.query("SELECT name FROM sources")}
    known_sources |= {r["source"] for r in cat.query("SELECT DISTINCT source FROM samples")}
    if existing and not replace:
        entries, changed = _reused_entries(cat, mixture, policy, eligible, known_sources)
        return Selection(mixture.name, policy, entries, warnings + changed, reused=True)

    with cat.transaction() as con:
        _drop_mixture(con, mixture.name)
        entries = [_draw_entry(con, mixture, stage, i, entry, policy, eligible, known_sources)
                   for stage in STAGES for i, entry in enumerate(mixture.stages.get(stage, []))]
        problems = [e for e in entries if e.status != "ok"]
        if strict and problems:
            raise MixtureError(f"mixture {mixture.name!r} (--strict): "
                               + "; ".join(f"stage {e.stage} {e.source}: {e.status} (requested {e.requested}, "
                                           f"available {e.available})" for e in problems)
                               + "\n" + Selection(mixture.name, policy, entries).table())
        _record_selection(cat, con, mixture, entries, policy, sha, manifest_path, run_id)
    return Selection(mixture.name, policy, entries, warnings)


def _drop_mixture(con, name: str) -> None:
    """Delete every row of mixture ``name`` (shards, members, availability, the mixture) before a redraw."""
    for table in ("shards", "mixture_members", "mixture_sources", "mixtures"):
        con.execute(f"DELETE FROM {table} WHERE {'name' if table == 'mixtures' else 'mixture'} = ?", [name])


def _entry_params(mixture: MixtureConfig, stage: str, i: int, entry: SourceEntry, policy: str | None) -> dict:
    params = {"source": entry.catalog_source(), "tasks": entry.tasks, "mixture": mixture.name, "stage": stage,
              "entry": i}
    if policy is not None:
        params["policy"] = policy
    return params


def _available(con, entry: SourceEntry, params: dict, eligible: str, known_sources: set[str]) -> int | None:
    """Eligible samples of an entry in the catalog as it is now; None for a source the catalog does not know."""
    if entry.catalog_source() not in known_sources:
        return None
    return int(con.execute(f"SELECT count(*) {eligible}", params).fetchone()[0])


def _status(entry: SourceEntry, available: int | None, selected: int) -> str:
    if available is None:
        return "absent"
    return "short" if isinstance(entry.count, int) and selected < entry.count else "ok"


def _draw_entry(con, mixture: MixtureConfig, stage: str, i: int, entry: SourceEntry, policy: str | None,
                eligible: str, known_sources: set[str]) -> EntryAvailability:
    """Count the entry's eligible samples and insert the first ``entry.take(available)`` of them in draw order
    (``md5('<seed>:<sample_id>')``, ties by id) into ``mixture_members``, with the dedup decision of each."""
    params = _entry_params(mixture, stage, i, entry, policy)
    found = _available(con, entry, params, eligible, known_sources)
    available = found or 0
    n = entry.take(available)
    status = _status(entry, found, n)
    if n:
        con.execute(
            f"""INSERT INTO mixture_members (mixture, stage, sample_id, source, task, entry, draw_key,
                                            dedup_policy, dedup_reason)
                SELECT $mixture, $stage, s.sample_id, s.source, s.task, {i},
                       md5('{int(mixture.seed)}:' || s.sample_id) AS draw_key,
                       {'d.policy, d.reason' if policy is not None else 'NULL, NULL'}
                {eligible}
                ORDER BY draw_key, s.sample_id LIMIT {int(n)}""",
            params,
        )
    return EntryAvailability(stage, i, entry.catalog_source(), entry.tasks, entry.requested(), int(available), int(n), status)


def _record_selection(cat: Catalog, con, mixture: MixtureConfig, entries: list[EntryAvailability],
                      policy: str | None, sha: str, manifest_path: str | Path | None, run_id: str | None) -> None:
    """The requested-vs-available rows (``mixture_sources``) and the ``mixtures`` row a rerun is checked against."""
    cat.insert("mixture_sources", [{
        "mixture": mixture.name, "stage": e.stage, "entry": e.entry, "source": e.source, "tasks": e.tasks,
        "requested": e.requested, "available": e.available, "selected": e.selected, "status": e.status,
    } for e in entries], con=con)
    cat.insert("mixtures", [{
        "name": mixture.name, "config": mixture.model_dump(mode="json"), "config_sha256": sha,
        "manifest_path": str(manifest_path) if manifest_path else None, "seed": mixture.seed,
        "dedup_policy": policy, "run_id": run_id,
    }], con=con)


def _reused_entries(cat: Catalog, mixture: MixtureConfig, policy: str | None, eligible: str,
                    known_sources: set[str]) -> tuple[list[EntryAvailability], list[str]]:
    """The recorded draw's entries with the availability of now, and one warning per entry whose eligible
    count differs from the one at the draw (ingest, quarantine or dedup changed since)."""
    drawn = {(r["stage"], r["entry"]): r for r in cat.query(
        "SELECT stage, entry, available FROM mixture_sources WHERE mixture = ?", [mixture.name])}
    selected = {(r["stage"], r["entry"]): r["n"] for r in cat.query(
        "SELECT stage, entry, count(*) AS n FROM mixture_members WHERE mixture = ? GROUP BY ALL", [mixture.name])}
    entries, warnings = [], []
    for stage in STAGES:
        for i, entry in enumerate(mixture.stages.get(stage, [])):
            found = _available(cat.con, entry, _entry_params(mixture, stage, i, entry, policy), eligible,
                               known_sources)
            n = selected.get((stage, i), 0)
            entries.append(EntryAvailability(stage, i, entry.catalog_source(), entry.tasks, entry.requested(), found or 0, n,
                                             _status(entry, found, n)))
            then = drawn[(stage, i)]["available"] if (stage, i) in drawn else None
            if then is not None and then != (found or 0):
                warnings.append(f"stage {stage} source {entry.catalog_source()}: {found or 0} samples eligible now, {then} "
                                f"when mixture {mixture.name!r} was drawn; the old draw of {n} is kept "
                                "(--replace redraws it)")
    return entries, warnings
