"""core.progress: tasks reach the installed renderer with their depth, counts and outcome; without one, nothing."""
from __future__ import annotations

import threading

import pytest

from core import progress


class Recorder:
    """A renderer that writes down every call."""

    def __init__(self):
        self.calls = []

    def start(self, description, total, depth):
        self.calls.append(("start", description, total, depth))
        return description

    def update(self, handle, completed, total):
        self.calls.append(("update", handle, completed, total))

    def stop(self, handle, seconds, ok):
        assert seconds >= 0
        self.calls.append(("stop", handle, ok))


def test_tasks_nest_and_report_counts_and_outcome():
    rec = Recorder()
    with progress.rendered_by(rec):
        with progress.task("step") as outer:
            with progress.task("bar", total=3) as bar:
                bar.advance()
                bar.advance(2)
            outer.update(1, total=1)
        with pytest.raises(ValueError):
            with progress.task("fails"):
                raise ValueError("x")
    assert rec.calls == [
        ("start", "step", None, 0), ("start", "bar", 3, 1), ("update", "bar", 1, 3), ("update", "bar", 3, 3),
        ("stop", "bar", True), ("update", "step", 1, 1), ("stop", "step", True),
        ("start", "fails", None, 0), ("stop", "fails", False)]


def test_without_a_renderer_tasks_count_and_draw_nothing():
    rec = Recorder()
    with progress.task("alone", total=2) as bar:
        bar.advance(2)
    assert bar.completed == 2 and rec.calls == []
    with progress.rendered_by(rec):
        pass
    with progress.task("after"):  # the renderer is gone once its block ends
        pass
    assert rec.calls == []


def test_advances_from_several_threads_add_up():
    rec = Recorder()
    with progress.rendered_by(rec), progress.task("threads", total=400) as bar:
        workers = [threading.Thread(target=lambda: [bar.advance() for _ in range(100)]) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    assert bar.completed == 400
    assert max(c[2] for c in rec.calls if c[0] == "update") == 400
