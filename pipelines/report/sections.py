"""Report sections: each is a function ``(Catalog, Scope) -> Section`` made with :func:`section`, and a report
is a list of them: :data:`CATALOG_STATS` (``mavors catalog stats``, the curate flow's catalog-stats step, the
whole catalog) and :data:`RUN_REPORT` (the HTML run report, scoped to one run and its subflows by
:func:`run_scope`). A section holds plain tables, figures drawn only when rendered and media cells decoded
only when rendered, so the console and the flow never start matplotlib or a video decoder.

    python -c "from core.catalog import Catalog; from pipelines.report.sections import catalog_stats; \
print(catalog_stats(Catalog('mavors-work/catalog.duckdb', read_only=True)))"
"""
from __future__ import annotations

import functools
import json
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.catalog import Catalog

Table = tuple[list[str], list[list[Any]]]  # (column names, rows of plain values, Media cells or None)

SHOWN_SAMPLES = 6
"""Samples shown per source in the sample browser (the rest: ``mavors catalog show`` / ``catalog query``)."""
SHOWN_GROUPS = 6
"""Duplicate groups, captioned media, DPO pairs per domain shown side by side."""
SHOWN_ITEMS = 100
"""Quarantined items listed one by one."""


@dataclass(frozen=True)
class Scope:
    """Whose rows a section shows: the runs in ``runs`` (a run and its subflows), or, with ``runs`` None,
    the whole catalog. Sections filter with :meth:`where` and pass :attr:`params`."""

    runs: tuple[str, ...] | None = None

    @property
    def params(self) -> dict[str, Any]:
        return {"runs": None if self.runs is None else list(self.runs)}

    @staticmethod
    def where(column: str) -> str:
        """SQL that is true for a row of a run in scope (every row when the scope is the catalog)."""
        return f"($runs::TEXT[] IS NULL OR list_contains($runs::TEXT[], {column}))"


CATALOG = Scope()


def run_scope(cat: Catalog, run_id: str) -> Scope:
    """``run_id`` and every run started inside it (``runs.parent_run_id``, at any depth)."""
    rows = cat.con.execute("""
        WITH RECURSIVE tree(run_id) AS (
            SELECT run_id FROM runs WHERE run_id = $run
            UNION SELECT r.run_id FROM runs r JOIN tree t ON r.parent_run_id = t.run_id)
        SELECT run_id FROM tree ORDER BY run_id""", {"run": run_id}).fetchall()
    return Scope(tuple(r[0] for r in rows) or (run_id,))


@dataclass(frozen=True)
class Media:
    """Media in a table cell, drawn when rendered: a thumbnail per image, a strip of ``frames`` frames (the
    middle of each of ``frames`` equal parts) per video. ``files``: (kind, path) in prompt order."""

    files: tuple[tuple[str, str], ...]
    frames: int = 4

    def __str__(self) -> str:
        return ", ".join(path for _, path in self.files)


@dataclass
class Figure:
    """A plot drawn on demand: ``draw(ax)`` on a ``width`` x ``height`` inch canvas; with ``panels`` > 1,
    ``draw(axes)`` on that many axes laid out in :attr:`grid`."""

    draw: Callable[[Any], Any]
    width: float = 7.0
    height: float = 3.2
    panels: int = 1

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, columns) of the panels: as square as it goes, at most 3 a row."""
        cols = min(3, math.ceil(math.sqrt(self.panels)))
        return math.ceil(self.panels / cols), cols


@dataclass
class Section:
    """A titled block: tables, figures, subsections; ``note`` says why a section is empty, ``warnings`` what a
    reader should not miss; ``catalog_wide`` marks a section that is not scoped to the run."""

    title: str
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    note: str = ""
    warnings: list[str] = field(default_factory=list)
    subsections: list[Section] = field(default_factory=list)
    catalog_wide: bool = False

    @property
    def has_data(self) -> bool:
        return (any(rows for _, rows in self.tables) or bool(self.figures)
                or any(s.has_data for s in self.subsections))

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


SectionBuilder = Callable[..., Section]  # (cat, scope=CATALOG) -> Section


def _has_rows(cat: Catalog, table: str) -> bool:
    return cat.has_table(table) and bool(cat.scalar(f"SELECT count(*) > 0 FROM {table}"))


def _rows(cat: Catalog, scope: Scope, sql: str, **params: Any) -> list[list[Any]]:
    return [list(r) for r in cat.con.execute(sql, {**scope.params, **params}).fetchall()]


def section(title: str, table: str | None = None, what: str = ""
            ) -> Callable[[Callable[[Catalog, Section, Scope], None]], SectionBuilder]:
    """Make ``fill(cat, sec, scope)`` a section builder ``(cat, scope=CATALOG) -> Section``.

    While ``table`` is absent or has no rows the section only says there are no ``what`` (a report of a fresh
    catalog still shows every heading); a run's section that found nothing of the run says how many rows
    other runs wrote."""
    def wrap(fill: Callable[[Catalog, Section, Scope], None]) -> SectionBuilder:
        @functools.wraps(fill)
        def build(cat: Catalog, scope: Scope = CATALOG) -> Section:
            sec = Section(title)
            if table is not None and not _has_rows(cat, table):
                sec.note = f"no {what} in the catalog"
                return sec
            fill(cat, sec, scope)
            if table is not None and scope.runs is not None and not sec.has_data and not sec.note:
                others = cat.scalar(f"SELECT count(*) FROM {table}")
                sec.note = (f"this run wrote no {what} ({others} in the catalog from other runs: "
                            "`mavors catalog stats`, `mavors catalog query`)")
            return sec
        return build
    return wrap


# -- drawing helpers ------------------------------------------------------------------------------------
def _integer_axis(axis) -> None:
    """Ticks on whole numbers only (steps, counts): no 1.25 steps."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _bars(ax, labels: list[str], series: dict[str, list[float]], ylabel: str) -> None:
    """Stacked bars: one bar per label, one colour per series."""
    bottom = [0.0] * len(labels)
    for name, values in series.items():
        ax.bar(labels, values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel(ylabel)
    _integer_axis(ax.yaxis)
    ax.tick_params(axis="x", labelrotation=30)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right")
    if len(series) > 1:
        ax.legend(fontsize=8)


def _text_of(conversation: Any, role: str) -> str:
    """The turns of one side (``human`` / ``gpt``) of a LLaVA conversation, joined."""
    turns = json.loads(conversation) if isinstance(conversation, str) else conversation
    return "\n".join(t.get("value", "") for t in turns if t.get("from") == role)


def _media_cell(cat: Catalog, kinds: list[str] | None, paths: list[str] | None, frames: int = 4) -> Media | None:
    """Media of stored paths (:meth:`Catalog.resolved`), to show from any working directory."""
    files = tuple((k, str(cat.resolved(p))) for k, p in zip(kinds or [], paths or []) if p)
    return Media(files, frames) if files else None


def _media_of(cat: Catalog, sample_ids: list[str]) -> dict[str, Media | None]:
    """Each sample's media (kind, stored file) in placeholder order."""
    rows = cat.con.execute("""
        SELECT u.sample_id, list(m.kind ORDER BY u.pos), list(m.storage_path ORDER BY u.pos)
        FROM (SELECT sample_id, unnest(media_hashes) AS h, generate_subscripts(media_hashes, 1) AS pos
              FROM samples WHERE list_contains($ids::TEXT[], sample_id)) u
        JOIN media m ON m.media_hash = u.h GROUP BY u.sample_id""", {"ids": sample_ids}).fetchall()
    return {sid: _media_cell(cat, kinds, paths) for sid, kinds, paths in rows}


# -- the catalog: sources, media, duplicates ---------------------------------------------------------
@section("Sources", "sources", "sources")
def sources(cat: Catalog, sec: Section, scope: Scope) -> None:
    """Per source: samples, distinct media, items refused at ingest."""
    rows = _rows(cat, scope, f"""
        SELECT s.name, s.format, s.modality, s.task,
               (SELECT count(*) FROM samples x WHERE x.source = s.name),
               (SELECT count(DISTINCT h) FROM (SELECT unnest(media_hashes) AS h FROM samples x WHERE x.source = s.name)),
               (SELECT count(*) FROM quarantine q WHERE q.source = s.name AND q.stage = 'ingest')
        FROM sources s WHERE {scope.where("s.run_id")} ORDER BY s.name""")
    sec.tables.append((["source", "format", "modality", "task", "samples", "media", "quarantined"], rows))


@section("Media", "media", "media")
def media(cat: Catalog, sec: Section, scope: Scope) -> None:
    """Media by kind: files, MB, total video hours, size range."""
    rows = _rows(cat, scope, f"""
        SELECT kind, count(*), round(sum(bytes) / 1e6, 3), round(sum(coalesce(duration_s, 0)) / 3600, 4),
               min(width) || 'x' || min(height) || ' .. ' || max(width) || 'x' || max(height)
        FROM media WHERE {scope.where("run_id")} GROUP BY kind ORDER BY kind""")
    sec.tables.append((["kind", "files", "MB", "hours", "size range"], rows))


@section("Duplicate media (same sha256 in several samples)", "samples", "samples")
def duplicate_media(cat: Catalog, sec: Section, scope: Scope) -> None:
    """Media hashes used by more than one sample: how many groups, and across which sources."""
    rows = _rows(cat, scope, f"""
        WITH uses AS (SELECT DISTINCT unnest(media_hashes) AS h, sample_id, source FROM samples
                      WHERE {scope.where("run_id")}),
             groups AS (SELECT h, count(DISTINCT sample_id) AS n, count(DISTINCT source) AS n_src,
                               string_agg(DISTINCT source, ', ' ORDER BY source) AS srcs
                        FROM uses GROUP BY h HAVING count(DISTINCT sample_id) > 1)
        SELECT srcs, count(*), sum(n), max(n) FROM groups GROUP BY srcs ORDER BY srcs""")
    sec.tables.append((["sources", "groups", "samples", "largest group"], rows))


# -- curation: composition, samples, captions, perplexity, dedup, shards -------------------------------
@section("Source composition", "samples", "samples")
def composition(cat: Catalog, sec: Section, scope: Scope) -> None:
    rows = _rows(cat, scope, f"""
        SELECT source, task, count(*) FROM samples WHERE {scope.where("run_id")}
        GROUP BY source, task ORDER BY source, task""")
    if not rows:
        return
    sec.tables.append((["source", "task", "samples"], rows))
    names = sorted({r[0] for r in rows})
    tasks = sorted({r[1] for r in rows})
    counts = {(s, t): n for s, t, n in rows}
    sec.figures.append(Figure(lambda ax: _bars(
        ax, names, {t: [counts.get((s, t), 0) for s in names] for t in tasks}, "samples")))


@section("Samples", "samples", "samples")
def samples(cat: Catalog, sec: Section, scope: Scope) -> None:
    """A few samples of every source, with their media, text, newest PPL and newest dedup verdict (looked up for
    the shown samples only: a large catalog costs a filtered scan, not the ``sample_overview`` view)."""
    rows = _rows(cat, scope, f"""
        WITH picked AS (
            SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY source ORDER BY sample_id) AS n,
                                  count(*) OVER (PARTITION BY source) AS total
                           FROM samples WHERE {scope.where("run_id")}) WHERE n <= $shown),
        ppl AS (SELECT sample_id, arg_max(ppl, created_at) AS ppl FROM ppl_scores
                WHERE sample_id IN (SELECT sample_id FROM picked) GROUP BY sample_id),
        verdict AS (SELECT sample_id, arg_max(kept, created_at) AS kept, arg_max(reason, created_at) AS reason
                    FROM dedup_decisions WHERE sample_id IN (SELECT sample_id FROM picked) GROUP BY sample_id)
        SELECT p.source, p.total, p.sample_id, p.task, p.conversation, ppl.ppl,
               CASE WHEN v.kept THEN 'kept' WHEN NOT v.kept THEN 'dropped' END, v.reason
        FROM picked p LEFT JOIN ppl USING (sample_id) LEFT JOIN verdict v USING (sample_id)
        ORDER BY p.source, p.sample_id""", shown=SHOWN_SAMPLES)
    shown_media = _media_of(cat, [r[2] for r in rows])
    by_source: dict[str, list[list[Any]]] = defaultdict(list)
    totals: dict[str, int] = {}
    for source, total, sid, task, conv, ppl, verdict, reason in rows:
        totals[source] = total
        by_source[source].append([shown_media.get(sid), sid, task, _text_of(conv, "human"),
                                  _text_of(conv, "gpt"), None if ppl is None else round(ppl, 2),
                                  f"{verdict} ({reason})" if verdict else None])
    for source, shown in by_source.items():
        sub = Section(f"{source}: {len(shown)} of {totals[source]} samples")
        sub.tables.append((["media", "sample", "task", "prompt", "answer", "PPL", "dedup"], shown))
        sec.subsections.append(sub)


@section("Caption lengths per captioner", "captions", "synthetic captions")
def caption_lengths(cat: Catalog, sec: Section, scope: Scope) -> None:
    """Raw captions per captioner and merged captions per merger, in tokens (table and box plot alike); a
    warning where most captions ran into the token limit."""
    rows = _rows(cat, scope, f"""
        SELECT captioner, count(*), count(*) FILTER (WHERE status = 'rejected'), round(avg(n_tokens), 1),
               max(n_tokens), count(*) FILTER (WHERE finish_reason = 'length'), list(n_tokens ORDER BY caption_id)
        FROM captions WHERE {scope.where("run_id")} GROUP BY captioner
        UNION ALL
        SELECT merger || ' (merged)', count(*), count(*) FILTER (WHERE status = 'rejected'), round(avg(n_tokens), 1),
               max(n_tokens), count(*) FILTER (WHERE finish_reason = 'length'), list(n_tokens ORDER BY merge_id)
        FROM merged_captions WHERE {scope.where("run_id")} GROUP BY merger
        ORDER BY 1""")
    if not rows:
        return
    sec.tables.append((["captioner", "captions", "rejected", "mean tokens", "max tokens", "cut by length"],
                       [r[:6] for r in rows]))
    for name, n, _, _, longest, cut, _ in rows:
        if cut == n:
            sec.warnings.append(f"all {cut} of {n} captions of {name} were cut at the token limit "
                                f"(finish_reason length, longest {longest} tokens): raise its max_tokens")
        elif cut * 2 >= n:
            sec.warnings.append(f"{cut} of {n} captions of {name} were cut at the token limit (finish_reason length)")
    lengths = {r[0]: r[6] for r in rows}
    names = sorted(lengths)

    def draw(ax):
        ax.boxplot([lengths[n] for n in names], tick_labels=names)
        ax.set_ylabel("tokens")
        _integer_axis(ax.yaxis)
        ax.tick_params(axis="x", labelrotation=20)

    sec.figures.append(Figure(draw))


@section("Captions side by side", "captions", "synthetic captions")
def captions_side_by_side(cat: Catalog, sec: Section, scope: Scope) -> None:
    """Per captioned media: every captioner's raw caption, the merged caption and the merger's kept reasoning."""
    picked = _rows(cat, scope, f"""
        SELECT c.media_hash, any_value(m.kind), any_value(m.storage_path) FROM captions c
        LEFT JOIN media m USING (media_hash) WHERE {scope.where("c.run_id")}
        GROUP BY c.media_hash ORDER BY c.media_hash LIMIT $shown""", shown=SHOWN_GROUPS)
    for media_hash, kind, path in picked:
        raw = _rows(cat, scope, f"""
            SELECT captioner, status || coalesce(' (' || reject_reason || ')', ''), n_tokens, finish_reason, text
            FROM captions WHERE media_hash = $h AND {scope.where("run_id")} ORDER BY captioner, created_at""",
                    h=media_hash)
        merged = _rows(cat, scope, f"""
            SELECT merger, status || coalesce(' (' || reject_reason || ')', ''), n_tokens, finish_reason, text,
                   reasoning
            FROM merged_captions WHERE media_hash = $h AND {scope.where("run_id")}
            ORDER BY created_at DESC LIMIT 1""", h=media_hash)
        rows = [[f"raw: {name}", status, n, finish, text] for name, status, n, finish, text in raw]
        for name, status, n, finish, text, reasoning in merged:
            rows.append([f"merged: {name}", status, n, finish, text])
            rows.append([f"reasoning kept by {name}", None, None, None, reasoning or "(none kept)"])
        if not merged:
            rows.append(["merged", None, None, None, "(not merged yet)"])
        sub = Section(f"media {media_hash[:12]} ({kind})")
        sub.tables.append((["media"], [[_media_cell(cat, [kind], [path])]]))
        sub.tables.append((["caption", "status", "tokens", "finish", "text"], rows))
        sec.subsections.append(sub)


@section("Perplexity per task", "ppl_scores", "perplexity scores")
def ppl_histograms(cat: Catalog, sec: Section, scope: Scope) -> None:
    rows = _rows(cat, scope, f"""
        SELECT s.task, p.ppl FROM ppl_scores p JOIN samples s USING (sample_id)
        WHERE {scope.where("p.run_id")} ORDER BY s.task""")
    if not rows:
        return
    by_task: dict[str, list[float]] = defaultdict(list)
    for task, ppl in rows:
        by_task[task].append(ppl)
    sec.tables.append((["task", "scored", "median PPL", "max PPL"], [
        [t, len(v), round(statistics.median(v), 2), round(max(v), 2)] for t, v in sorted(by_task.items())]))

    def draw(ax):
        for task, values in sorted(by_task.items()):  # outlined steps: overlapping tasks stay visible
            ax.hist([math.log10(v) for v in values], bins=20, histtype="step", linewidth=1.8, label=task)
        ax.set_xlabel("log10 PPL")
        ax.set_ylabel("samples")
        _integer_axis(ax.yaxis)
        ax.legend(fontsize=8)

    sec.figures.append(Figure(draw))


@section("Deduplication", "dedup_decisions", "dedup decisions")
def dedup(cat: Catalog, sec: Section, scope: Scope) -> None:
    """Kept and dropped per source, reasons per task, and the largest duplicate groups side by side."""
    where = scope.where("run_id")
    rows = _rows(cat, scope, f"""
        SELECT source, count(*) FILTER (WHERE kept), count(*) FILTER (WHERE NOT kept)
        FROM dedup_decisions WHERE {where} GROUP BY source ORDER BY source""")
    if not rows:
        return
    sec.tables.append((["source", "kept", "dropped"], rows))
    sec.tables.append((["task", "reason", "samples"], _rows(cat, scope, f"""
        SELECT task, reason, count(*) FROM dedup_decisions WHERE {where} GROUP BY task, reason ORDER BY task, reason""")))
    labels = [r[0] for r in rows]
    sec.figures.append(Figure(lambda ax: _bars(
        ax, labels, {"kept": [r[1] for r in rows], "dropped": [r[2] for r in rows]}, "samples")))
    groups = _rows(cat, scope, f"""
        SELECT policy, task, group_key, count(*) FROM dedup_decisions WHERE {where} AND group_key IS NOT NULL
        GROUP BY ALL HAVING count(*) > 1 ORDER BY count(*) DESC, policy, task, group_key LIMIT $shown""",
                   shown=SHOWN_GROUPS)
    for policy, task, key, size in groups:
        members = _rows(cat, scope, f"""
            SELECT d.sample_id, s.conversation, d.ppl, d.rank, d.kept, d.reason
            FROM dedup_decisions d LEFT JOIN samples s USING (sample_id)
            WHERE {scope.where("d.run_id")} AND d.policy = $p AND d.task = $t AND d.group_key = $k
            ORDER BY d.rank NULLS LAST, d.sample_id""", p=policy, t=task, k=key)
        shown_media = _media_of(cat, [m[0] for m in members])
        sub = Section(f"group {key[:12]} ({policy}, {task}): {size} samples")
        sub.tables.append((["media", "sample", "prompt", "answer", "PPL", "rank", "verdict", "reason"], [
            [shown_media.get(sid), sid, _text_of(conv, "human") if conv else None,
             _text_of(conv, "gpt") if conv else None, None if ppl is None else round(ppl, 2), rank,
             "kept" if kept else "dropped", reason]
            for sid, conv, ppl, rank, kept, reason in members]))
        sec.subsections.append(sub)


@section("Shards", "shards", "shards")
def shards(cat: Catalog, sec: Section, scope: Scope) -> None:
    rows = _rows(cat, scope, f"""
        SELECT mixture, stage, count(*), sum(n_samples), round(sum(bytes) / 1e6, 3), round(min(bytes) / 1e6, 3),
               round(max(bytes) / 1e6, 3)
        FROM shards WHERE {scope.where("run_id")} GROUP BY mixture, stage ORDER BY mixture, stage""")
    if not rows:
        return
    sec.tables.append((["mixture", "stage", "shards", "samples", "MB", "smallest MB", "largest MB"], rows))
    sizes = [r[0] / 1e6 for r in _rows(cat, scope, f"SELECT bytes FROM shards WHERE {scope.where('run_id')}")]

    def draw(ax):
        ax.hist(sizes, bins=20)
        ax.set_xlabel("shard size (MB)")
        ax.set_ylabel("shards")
        _integer_axis(ax.yaxis)

    sec.figures.append(Figure(draw))


# -- training, preference pairs, evaluation -------------------------------------------------------------
def _lr_series(records: list[dict]) -> dict[str, list[float]]:
    """Learning rate per module group over the steps, groups on the same schedule merged into one labelled
    line (``a = b``): lines drawn over each other would hide all but one."""
    first = records[0]["lr"]
    groups = sorted(first) if isinstance(first, dict) else ["all"]
    series = {g: [r["lr"][g] if isinstance(r["lr"], dict) else r["lr"] for r in records] for g in groups}
    merged: dict[tuple, list[str]] = {}
    for g, values in series.items():
        merged.setdefault(tuple(values), []).append(g)
    return {" = ".join(names): list(values) for values, names in merged.items()}


@section("Training: loss and learning rate per module group", "train_stages", "training stages")
def training(cat: Catalog, sec: Section, scope: Scope) -> None:
    from trainers.metrics import read_metrics

    stages = [dict(zip(["run_dir", "stage", "steps", "samples", "final_loss", "init_from", "export_path"], r))
              for r in _rows(cat, scope, f"""
        SELECT run_dir, stage, steps, samples, final_loss, init_from, export_path
        FROM train_stages WHERE {scope.where("run_id")} ORDER BY started_at, stage""")]
    if not stages:
        return
    sec.tables.append((["stage", "init from", "steps", "samples", "final loss", "export"], [
        [s["stage"], s["init_from"], s["steps"], s["samples"],
         None if s["final_loss"] is None else round(s["final_loss"], 4), s["export_path"]] for s in stages]))
    for s in stages:
        path = cat.resolved(s["run_dir"]) / s["stage"] / "metrics.jsonl"
        records = read_metrics(path)
        if not records:
            sec.warnings.append(f"stage {s['stage']}: no metrics at {path}: its loss and learning rate are not drawn")
            continue
        steps = [r["step"] for r in records]

        def draw_loss(ax, records=records, steps=steps, name=s["stage"]):
            ax.plot(steps, [r["loss"] for r in records], marker=".")
            ax.set_title(f"{name}: loss")
            ax.set_xlabel("step")
            ax.set_ylabel("loss (mean token NLL)")
            _integer_axis(ax.xaxis)

        def draw_lr(ax, records=records, steps=steps, name=s["stage"]):
            for (label, values), style in zip(_lr_series(records).items(), ["-", "--", ":", "-."] * 8):
                ax.plot(steps, values, linestyle=style, linewidth=1.6, label=label)
            ax.set_title(f"{name}: learning rate")
            ax.set_xlabel("step")
            ax.set_ylabel("learning rate")
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
            _integer_axis(ax.xaxis)
            ax.legend(fontsize=7)

        sec.figures.append(Figure(draw_loss, 5.5, 2.8))
        sec.figures.append(Figure(draw_lr, 5.5, 2.8))


@section("DPO preference pairs", "dpo_inputs", "preference pairs")
def dpo_pairs(cat: Catalog, sec: Section, scope: Scope) -> None:
    """One row per (pair set, domain, reason): inputs decided that way and the pairs they gave; pair sets in
    the order they were built, each named with the checkpoint it was built from. Then a few pairs per domain,
    chosen beside rejected (a video caption's rejected one was written for the shuffled video)."""
    rows = _rows(cat, scope, f"""
        SELECT i.pair_set_id, s.checkpoint_sha256[:12], i.domain, i.reason, count(*), sum(i.n_pairs)
        FROM dpo_inputs i LEFT JOIN dpo_pair_sets s USING (pair_set_id) WHERE {scope.where("i.run_id")}
        GROUP BY ALL ORDER BY min(s.created_at) NULLS LAST, 1, 3, 4""")
    if not rows:
        return
    sec.tables.append((["pair set", "checkpoint", "domain", "reason", "inputs", "pairs"], rows))
    per_domain: dict[str, float] = defaultdict(float)
    for _, _, domain, _, _, pairs in rows:
        per_domain[domain] += pairs or 0
    labels = sorted(per_domain)
    sec.figures.append(Figure(lambda ax: _bars(ax, labels, {"pairs": [per_domain[d] for d in labels]}, "pairs")))
    if not cat.has_table("dpo_pairs"):
        return
    pairs = _rows(cat, scope, f"""
        WITH picked AS (SELECT *, row_number() OVER (PARTITION BY domain ORDER BY pair_id) AS n FROM dpo_pairs
                        WHERE {scope.where("run_id")})
        SELECT p.domain, p.pair_id, p.prompt, p.media_kinds, p.media_paths, p.rejected_media_path, i.extra,
               p.chosen, p.rejected, round(p.margin, 3), p.chosen_reason, p.rejected_reason
        FROM picked p LEFT JOIN dpo_inputs i USING (pair_set_id, sample_id)
        WHERE p.n <= $shown ORDER BY p.domain, p.pair_id""", shown=SHOWN_GROUPS)
    by_domain: dict[str, list[list[Any]]] = defaultdict(list)
    for domain, pair_id, prompt, kinds, paths, shuffled, extra, chosen, rejected, margin, why_c, why_r in pairs:
        extra = json.loads(extra) if isinstance(extra, str) else (extra or {})
        order = extra.get("permutation")
        frames = len(order) if order else 4
        seen = _media_cell(cat, kinds, paths, frames)
        rejected_seen, rejected_why = seen, why_r
        if shuffled:  # the rejected caption was written for the shuffled video: show that one, in its order
            rejected_seen = Media((("video", str(cat.resolved(shuffled))),), frames)
            segments = " ".join(str(k + 1) for k in order) if order else "unrecorded"
            rejected_why = f"{why_r}; it saw the video shuffled, segments in order {segments}"
        by_domain[domain] += [[pair_id, _prompt_text(prompt), "chosen", seen, chosen, why_c, margin],
                              [None, None, "rejected", rejected_seen, rejected, rejected_why, None]]
    for domain, shown in by_domain.items():
        sub = Section(f"chosen vs rejected: {domain}")
        sub.tables.append((["pair", "prompt", "side", "media it saw", "answer", "why", "margin"], shown))
        sec.subsections.append(sub)


def _prompt_text(prompt: Any) -> str:
    """The text parts of a TRL conversational prompt (``[{"role", "content": [{"type": "text", ...}]}]``)."""
    turns = json.loads(prompt) if isinstance(prompt, str) else (prompt or [])
    parts = []
    for turn in turns:
        content = turn.get("content")
        if isinstance(content, str):
            parts.append(content)
        else:
            parts += [c.get("text", "") for c in content or [] if c.get("type") == "text"]
    return "\n".join(parts)


_NOT_RATES = ("loss", "answer_words", "caption_words", "words")
"""Evaluation metrics that are not rates in [0, 1] (plotted apart or left to the table)."""


@section("Evaluation per stage", "evals", "evaluation results")
def evaluations(cat: Catalog, sec: Section, scope: Scope) -> None:
    """Table-5-style: one row per (task, metric), one column per stage in training order (stage start, else
    first result); held-out loss and
    rates drawn per task in panels of their own; a warning where held-out loss rose from one stage to the next."""
    where = scope.where("run_id")
    rows = _rows(cat, scope, f"""
        SELECT stage, task, metric, avg(value), sum(samples) FROM evals WHERE {where}
        GROUP BY stage, task, metric ORDER BY task, metric, stage""")
    if not rows:
        return
    stages = [r[0] for r in _rows(cat, scope, f"""
        SELECT e.stage FROM evals e
        LEFT JOIN (SELECT stage, min(started_at) AS started FROM train_stages WHERE {where} GROUP BY stage) t
               USING (stage)
        WHERE {scope.where("e.run_id")} GROUP BY e.stage ORDER BY min(t.started) NULLS LAST, min(e.created_at), e.stage
        """)]  # training order
    table: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    samples_of: dict[tuple[str, str], int] = {}
    for stage, task, metric, value, n in rows:
        table[(task, metric)][stage] = value
        samples_of[(task, metric)] = n
    sec.tables.append((["task", "metric", *stages, "samples"], [
        [task, metric, *(None if s not in v else round(v[s], 4) for s in stages), samples_of[(task, metric)]]
        for (task, metric), v in sorted(table.items())]))
    losses = {k: v for k, v in table.items() if k[1] == "loss"}
    for (task, _), values in sorted(losses.items()):
        seen = [s for s in stages if s in values]
        for before, after in zip(seen, seen[1:]):
            if values[after] > values[before]:
                sec.warnings.append(f"{task}: held-out loss rose after {after}: {values[before]:.4f} ({before}) "
                                    f"-> {values[after]:.4f} ({after})")
    rates: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)  # task -> metric -> stage -> value
    for (task, metric), values in table.items():
        if metric not in _NOT_RATES:
            rates[task][metric] = values

    def draw(ax, series: dict[str, dict[str, float]], title: str, ylabel: str) -> None:
        n = len(series)
        for k, (label, values) in enumerate(sorted(series.items())):
            dodge = (k - (n - 1) / 2) * 0.08  # series with equal values side by side, not hidden behind another
            ax.plot([i + dodge for i in range(len(stages))], [values.get(s, math.nan) for s in stages],
                    marker="o", label=label)
        ax.set_xticks(range(len(stages)), stages)
        ax.set_xlim(-0.5, len(stages) - 0.5)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("stage")
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.legend(fontsize=7)

    if losses:
        sec.figures.append(Figure(lambda ax: draw(ax, {t: v for (t, _), v in losses.items()}, "held-out loss",
                                                  "loss (mean token NLL)"), 5.5, 2.8))
    if rates:
        tasks = sorted(rates)

        def draw_rates(axes):
            for ax, task in zip(axes, tasks):
                draw(ax, rates[task], task, "rate")
                ax.set_ylim(-0.05, 1.05)

        figure = Figure(draw_rates if len(tasks) > 1 else lambda ax: draw_rates([ax]), panels=len(tasks))
        rows, cols = figure.grid
        figure.width, figure.height = 3.8 * cols, 2.9 * rows
        sec.figures.append(figure)


@section("Quarantine", "quarantine", "quarantined items")
def quarantine(cat: Catalog, sec: Section, scope: Scope) -> None:
    """Refused items by stage and reason, the most frequent reason of a stage first; on a run's report also
    the items themselves (file or sample, reason, detail)."""
    where = scope.where("run_id")
    rows = _rows(cat, scope, f"""
        SELECT stage, reason, count(*), count(DISTINCT source) FROM quarantine WHERE {where}
        GROUP BY ALL ORDER BY 1, 3 DESC, 2""")
    if not rows:
        return
    sec.tables.append((["stage", "reason", "items", "sources"], rows))
    if scope.runs is None:
        return
    items = _rows(cat, scope, f"""
        SELECT stage, source, item, reason, detail FROM quarantine WHERE {where}
        ORDER BY stage, source, item, reason LIMIT $shown""", shown=SHOWN_ITEMS)
    sub = Section(f"quarantined items ({len(items)} of {sum(r[2] for r in rows)})")
    sub.tables.append((["stage", "source", "file or sample", "reason", "detail"], items))
    sec.subsections.append(sub)


def catalog_totals(cat: Catalog, scope: Scope = CATALOG) -> Section:
    """The whole catalog's sources and media, labelled as such on a run's report (``scope`` is ignored)."""
    sec = Section("Catalog-wide totals (all runs, not only this one)", catalog_wide=True)
    sec.subsections = [s for s in (sources(cat), media(cat)) if s.has_data]
    if not sec.subsections:
        sec.note = "the catalog holds no sources yet"
    return sec


CATALOG_STATS: list[SectionBuilder] = [sources, media, duplicate_media, quarantine, dpo_pairs]
"""``mavors catalog stats``: what the catalog holds (only the sections with data are shown)."""
RUN_REPORT: list[SectionBuilder] = [
    composition, samples, caption_lengths, captions_side_by_side, ppl_histograms, dedup, shards, training,
    dpo_pairs, evaluations, quarantine, catalog_totals,
]
"""The HTML run report, every heading shown (an empty section says why)."""


def build_sections(cat: Catalog, builders: list[SectionBuilder], scope: Scope = CATALOG) -> list[Section]:
    return [build(cat, scope) for build in builders]


def catalog_stats(cat: Catalog) -> list[dict[str, Any]]:
    """The :data:`CATALOG_STATS` tables that have rows, as ``{"title", "rows": [{column: value}]}``
    (what the curate flow publishes and returns)."""
    return [{"title": sec.title, "rows": [dict(zip(columns, row)) for row in rows]}
            for sec in build_sections(cat, CATALOG_STATS) for columns, rows in sec.tables if rows]
