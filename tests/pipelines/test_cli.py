"""The `mavors` command line: errors are one readable line (a traceback only with --debug), exit codes hold."""
from __future__ import annotations

import os
import subprocess
import sys

import yaml


def run(args, tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"work_dir": str(tmp_path / "work")}))
    env = {**os.environ, "MAVORS_CONFIG": str(settings)}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_library_errors_are_one_line_and_exit_1(tmp_path):
    proc = run(["report", "no-such-run"], tmp_path)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no-such-run" in lines[0] and "is not in the catalog" in lines[0]
    assert "Traceback" not in proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    proc = run(["--debug", "report", "no-such-run"], tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_usage_errors_exit_2(tmp_path):
    proc = run(["no-such-command"], tmp_path)
    assert proc.returncode == 2 and "No such command" in proc.stderr


def test_help_lists_every_area(tmp_path):
    proc = run(["--help"], tmp_path)
    assert proc.returncode == 0
    for command in ("ingest", "catalog", "models", "demo", "dedup", "shards", "dpo", "train", "report", "eval"):
        assert command in proc.stdout, command
