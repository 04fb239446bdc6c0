"""Run report: one self-contained HTML page (plots embedded as PNG) that shows a run instead of its logs.

    mavors report RUN_ID                 # writes <work_dir>/reports/<RUN_ID>.html
    mavors report latest --out run.html

The page is the run's ``runs`` row, then the :data:`~pipelines.report.sections.RUN_REPORT` sections: source
composition, caption lengths per captioner, PPL histograms per task, dedup kept/dropped per source, shard
sizes, loss and LR curves per module group per stage, DPO pair counts with reasons, evaluation results per
stage, quarantine reasons. A section whose tables are absent or empty says so instead of drawing nothing.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
from pathlib import Path
from typing import Any

from core.catalog import Catalog
from pipelines.report.sections import RUN_REPORT, Figure, Section, build_sections


def render_png(figure: Figure) -> bytes:
    """Draw a figure to PNG bytes with the non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(figure.width, figure.height), dpi=100)
    try:
        figure.draw(ax)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


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


def render_html(run: dict[str, Any], sections: list[Section]) -> str:
    """The page: a run header, then each section's tables and embedded PNG figures."""
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Mavors run {esc(str(run['run_id']))}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
        "font-size:13px;text-align:right}th{background:#f3f3f3}h2{border-bottom:2px solid #333;margin-top:1.5em}"
        "img{max-width:100%;margin:.3em}.note{color:#777;font-style:italic}td code{white-space:pre-wrap;"
        "text-align:left;display:block}.missing{color:#a40;background:#fff4e5;border-left:4px solid #e80;"
        "padding:4px 8px}</style></head><body>",
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
        parts += [f"<p class='missing'>input missing: {esc(m)}</p>" for m in sec.missing]
        for columns, rows in sec.tables:
            parts.append("<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>")
            for row in rows:
                parts.append("<tr>" + "".join(f"<td>{esc('' if v is None else str(v))}</td>" for v in row) + "</tr>")
            parts.append("</table>")
        for figure in sec.figures:
            png = base64.b64encode(render_png(figure)).decode()
            parts.append(f"<img alt='{esc(sec.title)}' src='data:image/png;base64,{png}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(cat: Catalog, run_id: str, out: str | Path) -> Path:
    """Render the report of ``run_id`` from the catalog to ``out``; returns the path."""
    run = resolve_run(cat, run_id)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(run, build_sections(cat, RUN_REPORT)), encoding="utf-8")
    return out
