"""Sections as rich tables on the terminal (``mavors catalog stats``); figures are left to the HTML report."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from pipelines.console import untruncated
from pipelines.report.sections import Section


def print_sections(console: Console, sections: list[Section]) -> None:
    """One table per section table that has rows, titled with its section (subsections follow their section);
    ``None`` prints as ``-``, a media cell as its file paths."""
    for sec in sections:
        for columns, rows in sec.tables:
            if not rows:
                continue
            table = Table(title=sec.title, title_justify="left")
            for col in columns:
                table.add_column(col)
            for row in rows:
                table.add_row(*("-" if v is None else str(v) for v in row))
            console.print(untruncated(table))
        print_sections(console, sec.subsections)
