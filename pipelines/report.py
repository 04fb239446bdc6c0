"""Run report: one self-contained HTML page (plots embedded as PNG) that shows a run instead of its logs.

    mavors report RUN_ID                 # writes <work_dir>/reports/<RUN_ID>.html
    mavors report latest --out run.html

Sections, each drawn from the catalog (and the training metrics files it points to):
source composition, caption lengths per captioner, PPL histograms per task, dedup
kept/dropped per source, shard sizes, loss and LR curves per module group per stage,
DPO pair counts with reasons, evaluation results per stage, quarantine reasons. A
section whose tables are absent or empty says so instead of drawing nothing.
"""
from __future__ import annotations

import base64
import datetime as dt
import functools
import html
import io
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.catalog import Catalog


@dataclass
class ReportSection:
    """A titled block: tables (column names + rows) and figures (PNG bytes)."""

    title: str
    tables: list[tuple[list[str], list[list[Any]]]] = field(default_factory=list)
    figures: list[bytes] = field(default_factory=list)
    note: str = ""

    @property
    def has_data(self) -> bool:
        return any(rows for _, rows in self.tables) or bool(self.figures)


def _has_rows(cat: Catalog, table: str) -> bool:
    exists = cat.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table])
    return bool(exists) and bool(cat.scalar(f"SELECT count(*) > 0 FROM {table}"))


def _figure(draw: Callable[[Any], None], width: float = 7.0, height: float = 3.2) -> bytes:
    """Render ``draw(ax)`` to PNG bytes with the non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    try:
        draw(ax)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


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


# -- sections ------------------------------------------------------------------------------------
def section(title: str, table: str | None = None, empty: str = ""
            ) -> Callable[[Callable[[Catalog, ReportSection], None]], Callable[[Catalog], ReportSection]]:
    """Make ``fill(cat, sec)`` a section builder ``(cat) -> ReportSection``; while ``table`` has no rows the
    section only says ``empty`` (a report of a fresh catalog still renders every heading)."""
    def wrap(fill: Callable[[Catalog, ReportSection], None]) -> Callable[[Catalog], ReportSection]:
        @functools.wraps(fill)
        def build(cat: Catalog) -> ReportSection:
            sec = ReportSection(title)
            if table is not None and not _has_rows(cat, table):
                sec.note = empty
            else:
                fill(cat, sec)
            return sec
        return build
    return wrap


@section("Source composition", "samples", "no samples ingested")
def composition(cat: Catalog, sec: ReportSection) -> None:
    rows = cat.con.execute(
        "SELECT source, task, count(*) FROM samples GROUP BY source, task ORDER BY source, task").fetchall()
    sec.tables.append((["source", "task", "samples"], [list(r) for r in rows]))
    sources = sorted({r[0] for r in rows})
    tasks = sorted({r[1] for r in rows})
    counts = {(s, t): n for s, t, n in rows}
    sec.figures.append(_figure(lambda ax: _bars(
        ax, sources, {t: [counts.get((s, t), 0) for s in sources] for t in tasks}, "samples")))


@section("Caption lengths per captioner", "captions", "no synthetic captions in the catalog")
def caption_lengths(cat: Catalog, sec: ReportSection) -> None:
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
        sec.figures.append(_figure(lambda ax: (ax.boxplot([lengths[n] for n in names], tick_labels=names),
                                               ax.set_ylabel("words"),
                                               ax.tick_params(axis="x", labelrotation=20))))


@section("Perplexity per task", "ppl_scores", "no perplexity scores")
def ppl_histograms(cat: Catalog, sec: ReportSection) -> None:
    rows = cat.con.execute("""
        SELECT s.task, p.ppl FROM ppl_scores p JOIN samples s USING (sample_id) ORDER BY s.task""").fetchall()
    by_task: dict[str, list[float]] = defaultdict(list)
    for task, ppl in rows:
        by_task[task].append(ppl)
    sec.tables.append((["task", "scored", "median PPL", "max PPL"], [
        [t, len(v), round(sorted(v)[len(v) // 2], 2), round(max(v), 2)] for t, v in sorted(by_task.items())]))

    def draw(ax):
        import math

        for task, values in sorted(by_task.items()):
            ax.hist([math.log10(v) for v in values], bins=20, alpha=0.6, label=task)
        ax.set_xlabel("log10 PPL")
        ax.set_ylabel("samples")
        ax.legend(fontsize=8)

    sec.figures.append(_figure(draw))


@section("Deduplication: kept and dropped per source", "dedup_decisions", "no dedup decisions")
def dedup(cat: Catalog, sec: ReportSection) -> None:
    rows = cat.con.execute("""
        SELECT source, count(*) FILTER (WHERE kept), count(*) FILTER (WHERE NOT kept)
        FROM dedup_decisions GROUP BY source ORDER BY source""").fetchall()
    sec.tables.append((["source", "kept", "dropped"], [list(r) for r in rows]))
    reasons = cat.con.execute(
        "SELECT task, reason, count(*) FROM dedup_decisions GROUP BY task, reason ORDER BY task, reason").fetchall()
    sec.tables.append((["task", "reason", "samples"], [list(r) for r in reasons]))
    labels = [r[0] for r in rows]
    sec.figures.append(_figure(lambda ax: _bars(
        ax, labels, {"kept": [r[1] for r in rows], "dropped": [r[2] for r in rows]}, "samples")))


@section("Shards", "shards", "no shards written")
def shards(cat: Catalog, sec: ReportSection) -> None:
    rows = cat.con.execute("""
        SELECT mixture, stage, count(*), sum(n_samples), sum(bytes), min(bytes), max(bytes)
        FROM shards GROUP BY mixture, stage ORDER BY mixture, stage""").fetchall()
    sec.tables.append((["mixture", "stage", "shards", "samples", "bytes", "smallest", "largest"],
                       [list(r) for r in rows]))
    sizes = [r[0] / 1e6 for r in cat.con.execute("SELECT bytes FROM shards").fetchall()]
    sec.figures.append(_figure(lambda ax: (ax.hist(sizes, bins=20), ax.set_xlabel("shard size (MB)"),
                                           ax.set_ylabel("shards"))))


@section("Training: loss and learning rate per module group", "train_stages", "no training stages recorded")
def training(cat: Catalog, sec: ReportSection) -> None:
    from trainers.metrics import read_metrics

    stages = cat.query("""
        SELECT run_dir, stage, steps, samples, final_loss, init_from, export_path
        FROM train_stages ORDER BY started_at, stage""")
    sec.tables.append((["stage", "init from", "steps", "samples", "final loss", "export"], [
        [s["stage"], s["init_from"], s["steps"], s["samples"],
         None if s["final_loss"] is None else round(s["final_loss"], 4), s["export_path"]] for s in stages]))
    for s in stages:
        records = read_metrics(Path(s["run_dir"]) / s["stage"] / "metrics.jsonl")
        if not records:
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

        sec.figures.append(_figure(draw_loss, 5.5, 2.8))
        sec.figures.append(_figure(draw_lr, 5.5, 2.8))


@section("DPO preference pairs", "dpo_inputs", "no preference pairs built")
def dpo_pairs(cat: Catalog, sec: ReportSection) -> None:
    rows = cat.con.execute("""
        SELECT pair_set_id, domain, reason, count(*), sum(n_pairs)
        FROM dpo_inputs GROUP BY pair_set_id, domain, reason ORDER BY pair_set_id, domain, reason""").fetchall()
    sec.tables.append((["pair set", "domain", "reason", "inputs", "pairs"], [list(r) for r in rows]))
    per_domain: dict[str, float] = defaultdict(float)
    for _, domain, _, _, pairs in rows:
        per_domain[domain] += pairs or 0
    labels = sorted(per_domain)
    sec.figures.append(_figure(lambda ax: _bars(ax, labels, {"pairs": [per_domain[d] for d in labels]}, "pairs")))


@section("Evaluation per stage", "evals", "no evaluation results")
def evaluations(cat: Catalog, sec: ReportSection) -> None:
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
        sec.figures.append(_figure(lambda ax: draw(ax, losses, "held-out loss"), 5.5, 2.8))
    if rates:
        sec.figures.append(_figure(lambda ax: draw(ax, rates, "rate"), 9.0, 3.6))


@section("Quarantine reasons")
def quarantine(cat: Catalog, sec: ReportSection) -> None:
    rows = cat.con.execute(
        "SELECT stage, reason, count(*) FROM quarantine GROUP BY stage, reason ORDER BY stage, reason").fetchall()
    sec.tables.append((["stage", "reason", "items"], [list(r) for r in rows]))
    if not rows:
        sec.note = "nothing quarantined"


SECTIONS: list[Callable[[Catalog], ReportSection]] = [
    composition, caption_lengths, ppl_histograms, dedup, shards, training, dpo_pairs, evaluations, quarantine,
]


def build_sections(cat: Catalog) -> list[ReportSection]:
    return [section(cat) for section in SECTIONS]


def resolve_run(cat: Catalog, run_id: str) -> dict[str, Any]:
    """The ``runs`` row for ``run_id`` (``latest``: the newest run); a clear error when absent."""
    if run_id == "latest":
        rows = cat.query("SELECT * FROM runs ORDER BY started_at DESC LIMIT 1")
    else:
        rows = cat.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
    if not rows:
        known = [r["run_id"] for r in cat.query("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 5")]
        raise KeyError(f"run {run_id!r} is not in the catalog {cat.path} (newest: {', '.join(known) or 'none'})")
    return rows[0]


def render_html(run: dict[str, Any], sections: list[ReportSection]) -> str:
    """The page: a run header, then each section's tables and embedded PNG figures."""
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Mavors run {esc(str(run['run_id']))}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
        "font-size:13px;text-align:right}th{background:#f3f3f3}h2{border-bottom:2px solid #333;margin-top:1.5em}"
        "img{max-width:100%;margin:.3em}.note{color:#777;font-style:italic}td code{white-space:pre-wrap;"
        "text-align:left;display:block}</style></head><body>",
        f"<h1>Mavors run <code>{esc(str(run['run_id']))}</code></h1>",
        "<table>",
    ]
    params = run.get("parameters")
    if isinstance(params, str):
        params = json.loads(params)
    header = {k: run.get(k) for k in ("command", "status", "code_version", "started_at", "ended_at")}
    if header["status"] == "running":  # a flow writes its report as its last step, before it records its end
        header["status"] = "running (the report was written before the run ended)"
        header["ended_at"] = "-"
    for key, value in header.items():
        parts.append(f"<tr><th>{key}</th><td>{esc(str(value))}</td></tr>")
    parts.append(f"<tr><th>parameters</th><td><code>{esc(json.dumps(params, sort_keys=True))}</code></td></tr>")
    parts.append(f"<tr><th>report written</th><td>{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC</td></tr>")
    parts.append("</table>")
    for sec in sections:
        parts.append(f"<h2>{esc(sec.title)}</h2>")
        if sec.note:
            parts.append(f"<p class='note'>{esc(sec.note)}</p>")
        for columns, rows in sec.tables:
            parts.append("<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>")
            for row in rows:
                parts.append("<tr>" + "".join(f"<td>{esc('' if v is None else str(v))}</td>" for v in row) + "</tr>")
            parts.append("</table>")
        for png in sec.figures:
            parts.append(f"<img alt='{esc(sec.title)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(cat: Catalog, run_id: str, out: str | Path) -> Path:
    """Render the report of ``run_id`` from the catalog to ``out``; returns the path."""
    run = resolve_run(cat, run_id)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(run, build_sections(cat)), encoding="utf-8")
    return out
