"""The `mavors` command line: errors are one readable line (a traceback only with --debug), exit codes hold,
and every command records one `runs` row that ends completed or failed with the error's message."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from pipelines.console import QUIET_ENV


def run(args, tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"work_dir": str(tmp_path / "work")}))
    # without the quiet variables an in-process CLI call of an earlier test left in os.environ
    env = {**{k: v for k, v in os.environ.items() if k not in QUIET_ENV}, "MAVORS_CONFIG": str(settings)}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_library_errors_are_one_line_and_exit_1(tmp_path):
    proc = run(["report", "no-such-run"], tmp_path)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no-such-run" in lines[0] and "is not in the catalog" in lines[0]
    assert "Traceback" not in proc.stderr
    # the message itself, no Python class prefix and no KeyError repr quoting around it
    assert lines[0].startswith("error: run 'no-such-run'") and "KeyError" not in lines[0]


def test_version_prints_the_installed_package_version(tmp_path):
    from importlib.metadata import version

    proc = run(["--version"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"mavors {version('mavors')}"


def test_debug_shows_the_traceback(tmp_path):
    proc = run(["--debug", "report", "no-such-run"], tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_usage_errors_exit_2(tmp_path):
    proc = run(["no-such-command"], tmp_path)
    assert proc.returncode == 2 and "No such command" in proc.stderr


def test_help_lists_every_area(tmp_path):
    proc = run(["--help"], tmp_path)
    assert proc.returncode == 0
    for command in ("ingest", "catalog", "models", "demo", "dedup", "shards", "quarantine", "dpo", "train", "report",
                    "eval"):
        assert command in proc.stdout, command


# -- run records: every command is one `runs` row, ended however the command ends -----------------------
def _invoke(args, tmp_path, monkeypatch):
    """The app in this process (CliRunner), on a catalog under ``tmp_path``; returns (result, runs rows)."""
    import duckdb
    from typer.testing import CliRunner

    from pipelines.cli import app

    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"work_dir": str(tmp_path / "work")}))
    monkeypatch.setenv("MAVORS_CONFIG", str(settings))
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    with duckdb.connect(str(tmp_path / "work" / "catalog.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT command, status, detail, parameters FROM runs").fetchall()
    return result, rows


def test_a_failing_eval_run_is_recorded_failed_with_its_message(tmp_path, monkeypatch):
    # An empty catalog has no held-out set: the evaluation refuses to run (after the checkpoint check, which a
    # folder with a config.json passes).
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "config.json").write_text("{}")
    result, rows = _invoke(["eval", "run", "--checkpoint", str(tmp_path / "export"), "--stage", "stage2"],
                           tmp_path, monkeypatch)
    assert isinstance(result.exception, RuntimeError)
    [(command, status, detail, parameters)] = rows
    assert (command, status) == ("eval run", "failed")
    assert detail == f"RuntimeError: {result.exception}" and "no held-out samples" in detail
    assert yaml.safe_load(parameters) == {"checkpoint": str(tmp_path / "export"), "stage": "stage2", "limit": None}


def test_a_failing_shards_select_is_recorded_failed_with_its_message(tmp_path, monkeypatch):
    from core.paths import MANIFESTS

    # --strict on an empty catalog: every source of the mixture is absent.
    result, rows = _invoke(["shards", "select", str(MANIFESTS / "mixtures" / "demo-stage2.yaml"), "--strict"],
                           tmp_path, monkeypatch)
    assert type(result.exception).__name__ == "MixtureError"
    [(command, status, detail, _)] = rows
    assert (command, status) == ("shards select", "failed")
    assert detail.startswith("MixtureError: mixture 'demo-stage2' (--strict): stage 2 video_qa: absent")


def test_ingest_records_one_run_with_what_each_source_added(demo_corpus, tmp_path, monkeypatch):
    import json

    import pyarrow.parquet as pq

    manifests = [demo_corpus / "manifests" / f"{name}.yaml" for name in ("image_captions_parquet", "image_qa")]
    result, rows = _invoke(["ingest", "--no-ray", *map(str, manifests)], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    [(command, status, detail, parameters)] = rows
    assert (command, status) == ("ingest", "completed")
    assert yaml.safe_load(parameters) == {"sources": ["image_captions_parquet", "image_qa"], "workers": 0}
    # samples added per source: the annotation rows (read with pyarrow / json) minus the generator's planted refusals
    truth = json.loads((demo_corpus / "corpus.json").read_text())
    parquet = pq.read_table(demo_corpus / "image_captions_parquet" / "captions.parquet").num_rows
    jsonl = len((demo_corpus / "image_qa" / "annotations.jsonl").read_text().splitlines())
    rows_in = {"image_captions_parquet": parquet, "image_qa": jsonl}
    refused = {s: sum(1 for key in truth["quarantine"] if key.startswith(f"{s}/")) for s in rows_in}
    assert json.loads(detail) == {s: rows_in[s] - refused[s] for s in rows_in}


def test_ray_is_switched_off_by_one_spelling_everywhere():
    """``--no-ray`` and nothing else (no ``--ray``, ``--serial``, ``--workers 0``) turns Ray off, in every command."""
    import typer

    from pipelines.cli import app

    def commands(group, prefix: str = ""):
        for name, command in getattr(group, "commands", {}).items():
            yield from commands(command, f"{prefix}{name} ")
            if not hasattr(command, "commands"):
                yield f"{prefix}{name}", command

    switches = {}
    for name, command in commands(typer.main.get_command(app)):
        spellings = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        assert not spellings & {"--ray", "--serial", "--in-process", "--local"}, (name, spellings)
        switches[name] = "--no-ray" in spellings
        if "--workers" in spellings:
            [workers] = [p for p in command.params if "--workers" in p.opts]
            assert workers.min == 1, f"{name}: --workers 0 must not be a second way to say --no-ray"
    assert {name for name, has in switches.items() if has} == {
        "ingest", "captions run", "ppl score", "shards build", "quarantine retry", "flow run"}


def _error_line(proc) -> str:
    """The one line a failing command prints (exit 1, no traceback, nothing else on stderr)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    return lines[0]


def test_errors_name_the_file_or_sample_and_the_reason(tmp_path):
    import io
    import tarfile

    data = b"{}" * 4000
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("s-000.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    cut, junk = tmp_path / "cut.tar", tmp_path / "junk.tar"
    cut.write_bytes(buf.getvalue()[:2048])  # the header and part of the member: a shard cut short by a crash
    junk.write_bytes(b"not a tar at all" * 64)
    empty = tmp_path / "empty-export"
    empty.mkdir()
    cases = {
        ("eval", "check-leakage", str(cut)): f"error: {cut}: cannot read the shard: truncated (unexpected end of data)",
        ("eval", "check-leakage", str(junk)): f"error: {junk}: cannot read the shard: not a tar file",
        ("shards", "verify", str(tmp_path / "nowhere")): f"error: {tmp_path / 'nowhere'}: the folder does not exist",
        ("dedup", "explain", "nosuch/x"): f"error: sample 'nosuch/x' is not in the catalog {tmp_path / 'work'}"
                                          "/catalog.duckdb (sample ids are '<source>/<item>'; see mavors catalog query)",
        ("eval", "run", "--checkpoint", str(empty), "--stage", "s"):
            f"error: {empty}: not a checkpoint directory (no config.json)",
    }
    for args, expected in cases.items():
        assert _error_line(run(list(args), tmp_path)) == expected, args


@pytest.mark.slow  # two checkpoint writes: ~25 s on an idle machine, 69 s at load 8
def test_the_default_console_has_no_third_party_lines_and_v_shows_them(tmp_path):
    """``mavors models make-tiny`` saves four checkpoints with transformers: its tqdm bars ("Writing model shards",
    "Loading weights") appear with -v only; by default the command prints its own five lines and nothing else."""
    quiet = run(["models", "make-tiny", str(tmp_path / "quiet")], tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    heads = [line.split(":")[0].strip() for line in quiet.stdout.splitlines() if ":" in line]
    assert heads == ["tokenizer", "siglip", "qwen2", "qwen2vl", "mavors"]  # (rich may wrap a long path)
    assert "%|" not in quiet.stdout
    loud = run(["-v", "models", "make-tiny", str(tmp_path / "loud")], tmp_path)
    assert loud.returncode == 0 and "Writing model shards" in loud.stderr and "Loading weights" in loud.stderr
