"""trainers.metrics.followed_steps: a stage trained by a child process shows its steps from the metrics file."""
from __future__ import annotations

import json

from core import progress
from trainers.metrics import followed_steps


class Steps:
    """A renderer keeping the last count of each task."""

    def __init__(self):
        self.done, self.totals, self.names = {}, {}, []

    def start(self, description, total, depth):
        self.names.append(description)
        self.totals[description] = total
        return description

    def update(self, handle, completed, total):
        self.done[handle] = completed

    def stop(self, handle, seconds, ok):
        pass


def test_the_newest_complete_record_sets_the_step(tmp_path):
    path = tmp_path / "demo-stage2" / "metrics.jsonl"
    steps = Steps()
    with progress.rendered_by(steps), followed_steps("demo-stage2", path, total=60) as poll:
        poll()  # the child has not written yet
        assert steps.done == {}
        path.parent.mkdir()
        path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3)))
        poll()
        assert steps.done == {"train demo-stage2": 3}
        with path.open("a") as f:
            f.write('{"step": 4, "lo')  # the child is half-way through its next line
        poll()
        assert steps.done == {"train demo-stage2": 3}
    assert steps.names == ["train demo-stage2"] and steps.totals == {"train demo-stage2": 60}
