"""Report sections: each is a function ``(Catalog) -> Section`` made with :func:`section`, and a report is a
list of them: :data:`CATALOG_STATS` (``mavors catalog stats``, the curate flow's catalog-stats step) and
:data:`RUN_REPORT` (the HTML run report). A section holds plain tables and figures that are drawn only when
rendered, so the console and the flow never start matplotlib.

    python -c "from core.catalog import Catalog; from pipelines.report.sections import catalog_stats; \
print(catalog_stats(Catalog('mavors-work/catalog.duckdb', read_only=True)))"
"""
from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.catalog import Catalog

Table = tuple[list[str], list[list[Any]]]  # (column names, rows of plain values)


@dataclass
class Figure:
    """A plot drawn on demand: ``draw(ax)`` on a ``width`` x ``height`` inch canvas."""

    draw: Callable[[Any], Any]
    width: float = 7.0
    height: float = 3.2


@dataclass
class Section:
    """A titled block: tables and figures; ``note`` says why a section is empty, ``missing`` names each input
    file (metrics, plot data) that was not found, shown as a warning instead of a silently absent figure."""

    title: str
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    note: str = ""
    missing: list[str] = field(default_factory=list)

    @property
    def has_data(self) -> bool:
        return any(rows for _, rows in self.tables) or bool(self.figures)


SectionBuilder = Callable[[Catalog], Section]


def _has_rows(cat: Catalog, table: str) -> bool:
    return cat.has_table(table) and bool(cat.scalar(f"SELECT count(*) > 0 FROM {table}"))


def section(title: str, table: str | None = None, empty: str = ""
            ) -> Callable[[Callable[[Catalog, Section], None]], SectionBuilder]:
    """Make ``fill(cat, sec)`` a section builder ``(cat) -> Section``; while ``table`` is absent or has no rows
    the section only says ``empty`` (a report of a fresh catalog still shows every heading)."""
    def wrap(fill: Callable[[Catalog, Section], None]) -> SectionBuilder:
        @functools.wraps(fill)
        def build(cat: Catalog) -> Section:
            sec = Section(title)
            if table is not None and not _has_rows(cat, table):
                sec.note = empty
            else:
                fill(cat, sec)
            return sec
        return build
    return wrap


def _bars(ax, labels: list[str], series: dict[str, list[float]], ylabel: str) -> None:
    """Stacked bars: one bar per label, one colour per series."""
    bottom = [0.0] * len(labels)
    for name, values in series.items():
        ax.bar(labels, values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelrotation=30)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right")
    if len(series) > 1:
        ax.legend(fontsize=8)


# -- the catalog: sources, media, duplicates ---------------------------------------------------------
@section("Sources", "sources", "no sources ingested")
def sources(cat: Catalog, sec: Section) -> None:
    """Per source: samples, distinct media, items refused at ingest."""
    rows = cat.con.execute("""
        SELECT s.name, s.format, s.modality, s.task,
               (SELECT count(*) FROM samples x WHERE x.source = s.name),
               (SELECT count(DISTINCT h) FROM (SELECT unnest(media_hashes) AS h FROM samples x WHERE x.source = s.name)),
               (SELECT count(*) FROM quarantine q WHERE q.source = s.name AND q.stage = 'ingest')
        FROM sources s ORDER BY s.name""").fetchall()
    sec.tables.append((["source", "format", "modality", "task", "samples", "media", "quarantined"],
                       [list(r) for r in rows]))


@section("Media", "media", "no media ingested")
def media(cat: Catalog, sec: Section) -> None:
    """Media by kind: files, bytes, total video hours, size range."""
    rows = cat.con.execute("""
        SELECT kind, count(*), sum(bytes), round(sum(coalesce(duration_s, 0)) / 3600, 4),
               min(width) || 'x' || min(height) || ' .. ' || max(width) || 'x' || max(height)
        FROM media GROUP BY kind ORDER BY kind""").fetchall()
    sec.tables.append((["kind", "files", "bytes", "hours", "size range"], [list(r) for r in rows]))


@section("Duplicate media (same sha256 in several samples)", "samples", "no samples ingested")
def duplicate_media(cat: Catalog, sec: Section) -> None:
    """Media hashes used by more than one sample: how many groups, and across which sources."""
    rows = cat.con.execute("""
        WITH uses AS (SELECT DISTINCT unnest(media_hashes) AS h, sample_id, source FROM samples),
             groups AS (SELECT h, count(DISTINCT sample_id) AS n, count(DISTINCT source) AS n_src,
                               string_agg(DISTINCT source, ', ' ORDER BY source) AS srcs
                        FROM uses GROUP BY h HAVING count(DISTINCT sample_id) > 1)
        SELECT srcs, count(*), sum(n), max(n) FROM groups GROUP BY srcs ORDER BY srcs""").fetchall()
    sec.tables.append((["sources", "groups", "samples", "largest group"], [list(r) for r in rows]))


# -- curation: composition, captions, perplexity, dedup, shards ----------------------------------------
@section("Source composition", "samples", "no samples ingested")
def composition(cat: Catalog, sec: Section) -> None:
    rows = cat.con.execute(
        "SELECT source, task, count(*) FROM samples GROUP BY source, task ORDER BY source, task").fetchall()
    sec.tables.append((["source", "task", "samples"], [list(r) for r in rows]))
    names = sorted({r[0] for r in rows})
    tasks = sorted({r[1] for r in rows})
    counts = {(s, t): n for s, t, n in rows}
    sec.figures.append(Figure(lambda ax: _bars(
        ax, names, {t: [counts.get((s, t), 0) for s in names] for t in tasks}, "samples")))


@section("Caption lengths per captioner", "captions", "no synthetic captions in the catalog")
def caption_lengths(cat: Catalog, sec: Section) -> None:
    lengths: dict[str, list[int]] = defaultdict(list)
    for name, text in cat.con.execute("SELECT captioner, text FROM captions WHERE status = 'ok'").fetchall():
        lengths[name].append(len(text.split()))
    if _has_rows(cat, "merged_captions"):
        for merger, text in cat.con.execute(
                "SELECT merger, text FROM merged_captions WHERE status = 'ok'").fetchall():
            lengths[f"{merger} (merged)"].append(len(text.split()))
    rows = cat.con.execute("""
        SELECT captioner, count(*), count(*) FILTER (WHERE status = 'rejected'),
               round(avg(n_tokens), 1), count(*) FILTER (WHERE finish_reason = 'length')
        FROM captions GROUP BY captioner ORDER BY captioner""").fetchall()
    sec.tables.append((["captioner", "captions", "rejected", "mean tokens", "cut by length"], [list(r) for r in rows]))
    names = sorted(n for n in lengths if lengths[n])
    if names:
        sec.figures.append(Figure(lambda ax: (ax.boxplot([lengths[n] for n in names], tick_labels=names),
                                              ax.set_ylabel("words"),
                                              ax.tick_params(axis="x", labelrotation=20))))


@section("Perplexity per task", "ppl_scores", "no perplexity scores")
def ppl_histograms(cat: Catalog, sec: Section) -> None:
    rows = cat.con.execute("""
        SELECT s.task, p.ppl FROM ppl_scores p JOIN samples s USING (sample_id) ORDER BY s.task""").fetchall()
    by_task: dict[str, list[float]] = defaultdict(list)
    for task, ppl in rows:
        by_task[task].append(ppl)
    sec.tables.append((["task", "scored", "median PPL", "max PPL"], [
        [t, len(v), round(sorted(v)[len(v) // 2], 2), round(max(v), 2)] for t, v in sorted(by_task.items())]))

    def draw(ax):
        for task, values in sorted(by_task.items()):
            ax.hist([math.log10(v) for v in values], bins=20, alpha=0.6, label=task)
        ax.set_xlabel("log10 PPL")
        ax.set_ylabel("samples")
        ax.legend(fontsize=8)

    sec.figures.append(Figure(draw))


@section("Deduplication: kept and dropped per source", "dedup_decisions", "no dedup decisions")
def dedup(cat: Catalog, sec: Section) -> None:
    rows = cat.con.execute("""
        SELECT source, count(*) FILTER (WHERE kept), count(*) FILTER (WHERE NOT kept)
        FROM dedup_decisions GROUP BY source ORDER BY source""").fetchall()
    sec.tables.append((["source", "kept", "dropped"], [list(r) for r in rows]))
    reasons = cat.con.execute(
        "SELECT task, reason, count(*) FROM dedup_decisions GROUP BY task, reason ORDER BY task, reason").fetchall()
    sec.tables.append((["task", "reason", "samples"], [list(r) for r in reasons]))
    labels = [r[0] for r in rows]
    sec.figures.append(Figure(lambda ax: _bars(
        ax, labels, {"kept": [r[1] for r in rows], "dropped": [r[2] for r in rows]}, "samples")))


@section("Shards", "shards", "no shards written")
def shards(cat: Catalog, sec: Section) -> None:
    rows = cat.con.execute("""
        SELECT mixture, stage, count(*), sum(n_samples), sum(bytes), min(bytes), max(bytes)
        FROM shards GROUP BY mixture, stage ORDER BY mixture, stage""").fetchall()
    sec.tables.append((["mixture", "stage", "shards", "samples", "bytes", "smallest", "largest"],
                       [list(r) for r in rows]))
    sizes = [r[0] / 1e6 for r in cat.con.execute("SELECT bytes FROM shards").fetchall()]
    sec.figures.append(Figure(lambda ax: (ax.hist(sizes, bins=20), ax.set_xlabel("shard size (MB)"),
                                          ax.set_ylabel("shards"))))


# -- training, preference pairs, evaluation -------------------------------------------------------------
@section("Training: loss and learning rate per module group", "train_stages", "no training stages recorded")
def training(cat: Catalog, sec: Section) -> None:
    from trainers.metrics import read_metrics

    stages = cat.query("""
        SELECT run_dir, stage, steps, samples, final_loss, init_from, export_path
        FROM train_stages ORDER BY started_at, stage""")
    sec.tables.append((["stage", "init from", "steps", "samples", "final loss", "export"], [
        [s["stage"], s["init_from"], s["steps"], s["samples"],
         None if s["final_loss"] is None else round(s["final_loss"], 4), s["export_path"]] for s in stages]))
    for s in stages:
        metrics = cat.resolved(s["run_dir"]) / s["stage"] / "metrics.jsonl"
        records = read_metrics(metrics)
        if not records:
            sec.missing.append(f"{s['stage']}: no loss or learning-rate plot, {metrics} is missing or empty")
            continue
        steps = [r["step"] for r in records]

        def draw_loss(ax, records=records, steps=steps, name=s["stage"]):
            ax.plot(steps, [r["loss"] for r in records], marker=".")
            ax.set_title(f"{name}: loss")
            ax.set_xlabel("step")

        def draw_lr(ax, records=records, steps=steps, name=s["stage"]):
            groups = sorted(records[0]["lr"]) if isinstance(records[0]["lr"], dict) else ["all"]
            for g in groups:
                ax.plot(steps, [r["lr"][g] if isinstance(r["lr"], dict) else r["lr"] for r in records], label=g)
            ax.set_title(f"{name}: learning rate")
            ax.set_xlabel("step")
            ax.legend(fontsize=7)

        sec.figures.append(Figure(draw_loss, 5.5, 2.8))
        sec.figures.append(Figure(draw_lr, 5.5, 2.8))


@section("DPO preference pairs", "dpo_inputs", "no preference pairs built")
def dpo_pairs(cat: Catalog, sec: Section) -> None:
    """One row per (pair set, domain, reason): inputs decided that way and the pairs they gave; pair sets in
    the order they were built, each named with the checkpoint it was built from."""
    rows = cat.con.execute("""
        SELECT i.pair_set_id, s.checkpoint_sha256[:12], i.domain, i.reason, count(*), sum(i.n_pairs)
        FROM dpo_inputs i LEFT JOIN dpo_pair_sets s USING (pair_set_id)
        GROUP BY ALL ORDER BY min(s.created_at) NULLS LAST, 1, 3, 4""").fetchall()
    sec.tables.append((["pair set", "checkpoint", "domain", "reason", "inputs", "pairs"], [list(r) for r in rows]))
    per_domain: dict[str, float] = defaultdict(float)
    for _, _, domain, _, _, pairs in rows:
        per_domain[domain] += pairs or 0
    labels = sorted(per_domain)
    sec.figures.append(Figure(lambda ax: _bars(ax, labels, {"pairs": [per_domain[d] for d in labels]}, "pairs")))


@section("Evaluation per stage", "evals", "no evaluation results")
def evaluations(cat: Catalog, sec: Section) -> None:
    """Table-5-style: one row per (task, metric), one column per stage in training order."""
    rows = cat.con.execute("""
        SELECT stage, task, metric, avg(value), sum(samples) FROM evals
        GROUP BY stage, task, metric ORDER BY task, metric, stage""").fetchall()
    stages = [r[0] for r in cat.con.execute(
        "SELECT stage FROM evals GROUP BY stage ORDER BY min(created_at), stage").fetchall()]
    table: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    samples: dict[tuple[str, str], int] = {}
    for stage, task, metric, value, n in rows:
        table[(task, metric)][stage] = value
        samples[(task, metric)] = n
    sec.tables.append((["task", "metric", *stages, "samples"], [
        [task, metric, *(None if s not in v else round(v[s], 4) for s in stages), samples[(task, metric)]]
        for (task, metric), v in sorted(table.items())]))
    rates = {k: v for k, v in table.items() if k[1] not in ("loss", "answer_words", "caption_words")}
    losses = {k: v for k, v in table.items() if k[1] == "loss"}

    def draw(ax, series, ylabel):
        for (task, metric), values in sorted(series.items()):
            ax.plot(stages, [values.get(s) for s in stages], marker="o", label=f"{task}/{metric}")
        ax.set_xlabel("stage")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes, not over lines

    if losses:
        sec.figures.append(Figure(lambda ax: draw(ax, losses, "held-out loss"), 5.5, 2.8))
    if rates:
        sec.figures.append(Figure(lambda ax: draw(ax, rates, "rate"), 9.0, 3.6))


@section("Quarantine", "quarantine", "nothing quarantined")
def quarantine(cat: Catalog, sec: Section) -> None:
    """Refused items by stage and reason, the most frequent reason of a stage first."""
    rows = cat.con.execute(
        "SELECT stage, reason, count(*), count(DISTINCT source) FROM quarantine GROUP BY ALL ORDER BY 1, 3 DESC, 2"
    ).fetchall()
    sec.tables.append((["stage", "reason", "items", "sources"], [list(r) for r in rows]))


CATALOG_STATS: list[SectionBuilder] = [sources, media, duplicate_media, quarantine, dpo_pairs]
"""``mavors catalog stats``: what the catalog holds (only the sections with data are shown)."""
RUN_REPORT: list[SectionBuilder] = [
    composition, caption_lengths, ppl_histograms, dedup, shards, training, dpo_pairs, evaluations, quarantine,
]
"""The HTML run report, every heading shown (an empty section says why)."""


def build_sections(cat: Catalog, builders: list[SectionBuilder]) -> list[Section]:
    return [build(cat) for build in builders]


def catalog_stats(cat: Catalog) -> list[dict[str, Any]]:
    """The :data:`CATALOG_STATS` tables that have rows, as ``{"title", "rows": [{column: value}]}``
    (what the curate flow publishes and returns)."""
    return [{"title": sec.title, "rows": [dict(zip(columns, row)) for row in rows]}
            for sec in build_sections(cat, CATALOG_STATS) for columns, rows in sec.tables if rows]
