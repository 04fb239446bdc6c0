"""What ``mavors`` shows on the terminal: quiet third-party libraries, one line per finished step, rich bars.

    mavors demo        # a bar per running step, a line per finished one, then the summary tables
    mavors -v demo     # plus every library's own logs, warnings and tqdm bars

The library reports progress through :mod:`core.progress`; :class:`RichRenderer` draws it. :func:`quiet` must run
before the chatty libraries (vLLM, transformers, Prefect, Ray) are imported: they read these settings then.
"""
from __future__ import annotations

import logging
import os
import threading
import warnings
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

# The project's own packages: their warnings stay visible without -v (a warning of ours is meant for the user).
OWN_PACKAGES = ("core", "model", "inference", "curation", "evaluation", "trainers", "pipelines", "demo")

# Environment that silences the libraries' own console output; the user's environment always wins.
QUIET_ENV = {
    "TQDM_DISABLE": "1",  # tqdm reads TQDM_* as default arguments: every bar (vLLM, datasets, lmms-eval)
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" / "Writing model shards" bars
    "TRANSFORMERS_VERBOSITY": "error",
    "VLLM_LOGGING_LEVEL": "ERROR",
    "RAY_LOGGER_LEVEL": "warning",  # "Started a local Ray instance"
    "TORCH_CPP_LOG_LEVEL": "ERROR",  # c10 warnings printed from C++ threads ("[W... utils.cpp] NUMA binding")
    # Prefect's console handler only; its API handler (the UI's run logs) keeps every level.
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
    "PREFECT_SERVER_LOGGING_LEVEL": "ERROR",  # the ephemeral server's own start-up warnings
}

# Loggers that log at import, before their library reads the settings above: "Setting accelerator to CPU" (DeepSpeed,
# which also sets its own level then: a filter on the logger object outlives that), "Triton is installed, but
# doesn't include CPU backend" (vllm.triton_utils, whose level it inherits from "vllm").
LOUD_LOGGERS = ("DeepSpeed", "vllm")


def quiet(verbose: bool) -> None:
    """Without ``-v``: third-party logs below error, their Python warnings and tqdm bars off; ours stay."""
    if verbose:
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in LOUD_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.ERROR)
        logger.addFilter(lambda record: record.levelno >= logging.ERROR)
    warnings.filterwarnings("ignore")
    own = "|".join(OWN_PACKAGES)
    warnings.filterwarnings("default", module=rf"({own})(\.|$)")


class RichRenderer:
    """:class:`core.progress.Renderer` on a rich console: a bar (or spinner) per running task; when an outermost
    task ends, one line with its name, count and seconds; nested tasks leave nothing behind. Bars are drawn on a
    terminal only: output piped to a file or a log gets the lines alone."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=True)
        self._open = 0
        self._lock = threading.Lock()

    def start(self, description: str, total: int | None, depth: int) -> Any:
        with self._lock:
            if self._open == 0 and self.console.is_terminal:
                self.progress.start()
            self._open += 1
            return self.progress.add_task("  " * depth + description, total=total), description, depth

    def update(self, handle: Any, completed: int, total: int | None) -> None:
        self.progress.update(handle[0], completed=completed, total=total)

    def stop(self, handle: Any, seconds: float, ok: bool) -> None:
        task_id, description, depth = handle
        with self._lock:
            task = next(t for t in self.progress.tasks if t.id == task_id)
            self.progress.remove_task(task_id)
            if depth == 0:
                count = f" ({int(task.completed)})" if task.total is not None and task.completed else ""
                mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
                self.console.print(f"{mark} {description}{count}  {seconds:.1f} s", highlight=False)
            self._open -= 1
            if self._open == 0 and self.console.is_terminal:
                self.progress.stop()


def untruncated(table: Table) -> Table:
    """Every cell whole on a narrow terminal: text folds onto a second line instead of ending in '…', and the
    first column (the names rows are told apart by: sources, stages, tasks) keeps its longest name on one line."""
    for i, column in enumerate(table.columns):
        column.overflow = "fold"
        if i == 0:
            column.no_wrap = True
            column.min_width = max([len(str(column.header)), *(len(str(c)) for c in column.cells)])
    return table
