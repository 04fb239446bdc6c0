"""``mavors demo`` and ``mavors models make-tiny`` work under the settings' work dir (``mavors --config X``).

    pytest tests/pipelines/commands/test_flows.py -q

The demo itself is the end-to-end flow's business (tests/pipelines/flows); here only where it is pointed.
"""
from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner


def test_demo_and_make_tiny_use_the_work_dir_of_the_config(tmp_path, monkeypatch):
    import demo.tiny_models
    import pipelines.flows
    import pipelines.flows.end_to_end as e2e
    from pipelines.cli import app

    seen = {}
    monkeypatch.setattr(pipelines.flows, "configure_prefect", lambda work_dir=None: seen.setdefault("prefect", work_dir))
    monkeypatch.setattr(e2e, "demo", lambda work_dir, seed=0, use_ray=False: seen.setdefault("demo", work_dir) and {})
    monkeypatch.setattr(demo.tiny_models, "make_tiny", lambda out, seed=0: seen.setdefault("tiny", out) and {})
    monkeypatch.setattr("pipelines.commands.flows._print_summary", lambda summary: None)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "settings.yaml").write_text("work_dir: ../elsewhere/work\n")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("MAVORS_CONFIG", "")  # the CLI sets it from --config: restored (to unset) after the test
    monkeypatch.delenv("MAVORS_CONFIG")
    for args in (["demo"], ["models", "make-tiny"]):
        result = CliRunner().invoke(app, ["--config", "../conf/settings.yaml", *args])
        assert result.exit_code == 0, result.output
    work = tmp_path / "elsewhere" / "work"
    assert seen == {"prefect": work, "demo": work, "tiny": work / "models"}
    # without a config: the embedded ./mavors-work, as before
    monkeypatch.delenv("MAVORS_CONFIG")
    seen.clear()
    assert CliRunner().invoke(app, ["demo"]).exit_code == 0
    assert seen["demo"] == Path("mavors-work")
