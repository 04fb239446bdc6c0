"""Run report: one self-contained HTML page (plots and thumbnails embedded) that shows a run instead of its logs.

    mavors report RUN_ID                 # writes <work_dir>/reports/<RUN_ID>.html
    mavors report latest --out run.html  # the newest top-level run

The page is the run's ``runs`` row and the runs started inside it (an end-to-end flow's parts), a table of
contents, then the :data:`~pipelines.report.sections.RUN_REPORT` sections over the rows those runs wrote:
source composition, sample thumbnails (videos as frame strips) with their text, caption lengths and raw
captions beside the merged one, PPL per task, dedup verdicts and duplicate groups side by side, shards, loss
and LR per stage, DPO pairs chosen beside rejected, evaluation per stage, quarantined items; the last section
is the whole catalog's totals, labelled so. Warnings (a failed run, captions cut by length, held-out loss
rising) stand out in boxes; a section with nothing of the run says so instead of drawing nothing.

A flow writes its report as its last step, before its run is recorded as ended; :func:`refresh_status`
rewrites the page's run block once it has ended (pipelines/flows/common.py).
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import re
from pathlib import Path
from typing import Any

from core.catalog import Catalog
from pipelines.report.sections import RUN_REPORT, Figure, Media, Scope, Section, build_sections, run_scope

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #333;margin-top:1.8em} h3{margin:1.2em 0 .3em;font-size:1.02em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;
text-align:left;vertical-align:top} th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
td.text{white-space:pre-wrap;max-width:30em} td code{white-space:pre-wrap;display:block}
img.plot{max-width:100%;margin:.3em 0;display:block} img.thumb{height:72px;margin:1px;border:1px solid #999}
.note{color:#666;font-style:italic} .missing{color:#a00;font-size:12px}
.warning{background:#fff4e0;border-left:5px solid #e08a00;padding:.5em .8em;margin:.6em 0}
.failed{background:#fde8e8;border-left:5px solid #c00}
.wide{display:inline-block;background:#e6eefa;border:1px solid #89a;border-radius:3px;padding:0 .4em;
font-size:12px;font-weight:normal;margin-left:.5em;vertical-align:middle}
nav ol{columns:2;font-size:14px} nav .empty{color:#888}
"""


def render_png(figure: Figure) -> bytes:
    """Draw a figure to PNG bytes with the non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = figure.grid
    fig, axes = plt.subplots(rows, cols, figsize=(figure.width, figure.height), dpi=100, squeeze=False)
    try:
        flat = list(axes.flat)
        for unused in flat[figure.panels:]:
            unused.set_visible(False)
        figure.draw(flat[0] if figure.panels == 1 else flat[:figure.panels])
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def resolve_run(cat: Catalog, run_id: str) -> dict[str, Any]:
    """The ``runs`` row for ``run_id`` (``latest``: the newest run not started inside another); a clear error
    when absent."""
    if run_id == "latest":
        rows = cat.query("SELECT * FROM runs WHERE parent_run_id IS NULL ORDER BY started_at DESC LIMIT 1")
    else:
        rows = cat.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
    if not rows:
        known = [r["run_id"] for r in cat.query("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 5")]
        raise KeyError(f"run {run_id!r} is not in the catalog {cat.path} (newest: {', '.join(known) or 'none'})")
    return rows[0]


# -- cells, tables, sections ----------------------------------------------------------------------------
def _media_html(cell: Media) -> str:
    """Thumbnails of a media cell; a missing or undecodable file is a visible note, not a gap."""
    from model.preprocessing import MediaError
    from pipelines.report.thumbs import thumbnail

    esc = html.escape
    parts = []
    for kind, path in cell.files:
        if not Path(path).is_file():
            parts.append(f"<span class='missing'>missing: {esc(path)}</span>")
            continue
        try:
            jpeg = base64.b64encode(thumbnail(kind, path, cell.frames)).decode()
        except (OSError, MediaError) as e:
            parts.append(f"<span class='missing'>cannot show {esc(path)}: {esc(str(e))}</span>")
            continue
        parts.append(f"<img class='thumb' alt='{esc(kind)} {esc(Path(path).name)}' title='{esc(path)}' "
                     f"src='data:image/jpeg;base64,{jpeg}'>")
    return "".join(parts)


def _cell(value: Any) -> str:
    if value is None:
        return "<td></td>"
    if isinstance(value, Media):
        return f"<td>{_media_html(value)}</td>"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"<td class='num'>{value}</td>"
    text = str(value)
    return f"<td class='text'>{html.escape(text)}</td>" if len(text) > 40 or "\n" in text else \
        f"<td>{html.escape(text)}</td>"


def _table(columns: list[str], rows: list[list[Any]]) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"
    return "<table>" + head + "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows) + "</table>"


def _section(sec: Section, level: int = 2) -> list[str]:
    esc = html.escape
    badge = "<span class='wide'>catalog-wide</span>" if sec.catalog_wide else ""
    parts = [f"<section id='{sec.anchor}'>" if level == 2 else "<div>",
             f"<h{level}>{esc(sec.title)}{badge}</h{level}>"]
    parts += [f"<div class='warning'>&#9888; {esc(w)}</div>" for w in sec.warnings]
    if sec.note:
        parts.append(f"<p class='note'>{esc(sec.note)}</p>")
    parts += [_table(columns, rows) for columns, rows in sec.tables if rows]
    for figure in sec.figures:
        png = base64.b64encode(render_png(figure)).decode()
        parts.append(f"<img class='plot' alt='{esc(sec.title)} (plot)' src='data:image/png;base64,{png}'>")
    for sub in sec.subsections:
        parts += _section(sub, level + 1)
    parts.append("</section>" if level == 2 else "</div>")
    return parts


# -- the page -------------------------------------------------------------------------------------------
_RUN_BLOCK = re.compile(r"<!-- run -->.*?<!-- /run -->", re.S)


def _run_block(cat: Catalog, run: dict[str, Any], scope: Scope) -> str:
    """The run's header table, the runs of the report (the run and those inside it) and a callout for a run
    that did not complete, between markers :func:`refresh_status` replaces."""
    esc = html.escape
    params = run.get("parameters")
    if isinstance(params, str):
        params = json.loads(params)
    header = {k: run.get(k) for k in ("command", "status", "code_version", "started_at", "ended_at")}
    if header["status"] == "running":  # a flow writes its report as its last step, before it records its end
        header["status"] = "running (the report was written before the run ended)"
        header["ended_at"] = "-"
    parts = ["<!-- run -->", "<table>"]
    parts += [f"<tr><th>{key}</th><td>{esc(str(value))}</td></tr>" for key, value in header.items()]
    parts.append(f"<tr><th>parameters</th><td><details><summary>{len(params or {})} parameters</summary>"
                 f"<code>{esc(json.dumps(params, sort_keys=True, indent=1))}</code></details></td></tr>")
    parts.append(f"<tr><th>page written</th><td>{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC</td></tr>")
    parts.append("</table>")
    runs = cat.query("""SELECT run_id, command, status, started_at, ended_at, detail FROM runs
                        WHERE list_contains(?, run_id) ORDER BY started_at, run_id""", [list(scope.runs or [])])
    for r in runs:
        if r["status"] in ("failed", "interrupted"):
            parts.append(f"<div class='warning failed'>&#9888; run {esc(r['run_id'])} ({esc(r['command'])}) "
                         f"{esc(r['status'])}: {esc(str(r['detail']))}</div>")
    if len(runs) > 1:
        parts.append("<p>This report covers the run and the runs started inside it:</p>")
        parts.append(_table(["run", "command", "status", "started", "ended"],
                            [[r["run_id"], r["command"], r["status"], str(r["started_at"]), str(r["ended_at"] or "-")]
                             for r in runs]))
    parts.append("<!-- /run -->")
    return "".join(parts)


def render_html(cat: Catalog, run: dict[str, Any], scope: Scope, sections: list[Section]) -> str:
    """The page: title, run block, table of contents, then each section."""
    esc = html.escape
    run_id = esc(str(run["run_id"]))
    parts = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>Mavors run {run_id}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>Mavors run <code>{run_id}</code></h1>",
             _run_block(cat, run, scope), "<nav><h2>Contents</h2><ol>"]
    for sec in sections:
        mark = f" <span class='empty'>(nothing)</span>" if not sec.has_data else ""
        warn = f" &#9888; {len(sec.warnings)}" if sec.warnings else ""
        parts.append(f"<li><a href='#{sec.anchor}'>{esc(sec.title)}</a>{mark}{warn}</li>")
    parts.append("</ol></nav>")
    for sec in sections:
        parts += _section(sec)
    parts.append("</body></html>")
    return "\n".join(parts)


def report_path(work_dir: str | Path, run_id: str) -> Path:
    """Where a run's report lives: ``<work_dir>/reports/<run_id>.html`` (the flows and ``mavors report``)."""
    return Path(work_dir) / "reports" / f"{run_id}.html"


def write_report(cat: Catalog, run_id: str, out: str | Path) -> Path:
    """Render the report of ``run_id`` (its rows and its subflows') from the catalog to ``out``; returns the path."""
    run = resolve_run(cat, run_id)
    scope = run_scope(cat, run["run_id"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(cat, run, scope, build_sections(cat, RUN_REPORT, scope)), encoding="utf-8")
    return out


def refresh_status(cat: Catalog, run_id: str, path: str | Path) -> bool:
    """Rewrite the run block of the report at ``path`` from the catalog (the run's end, status and subflows);
    False when there is no such report."""
    path = Path(path)
    if not path.is_file():
        return False
    run = resolve_run(cat, run_id)
    block = _run_block(cat, run, run_scope(cat, run_id))
    path.write_text(_RUN_BLOCK.sub(lambda _: block, path.read_text(encoding="utf-8"), count=1), encoding="utf-8")
    return True
