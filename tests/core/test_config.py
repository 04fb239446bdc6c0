"""Relative paths in config files: one rule for every kind (settings, engines, rosters, scorers, DPO configs).

    pytest tests/core/test_config.py -q

Each file is loaded from a working directory that is neither its folder nor the work dir, so a path that
followed the working directory would land somewhere else and fail the comparison.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.config import ConfigError


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Run from an unrelated folder; returns the folder the config files live in."""
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    conf = tmp_path / "conf"
    conf.mkdir()
    return conf


def test_settings_paths_are_relative_to_the_settings_file(elsewhere, monkeypatch):
    from core.settings import load_settings

    (elsewhere / "settings.yaml").write_text("work_dir: ../work\ncatalog_path: cat/catalog.duckdb\n")
    settings = load_settings(elsewhere / "settings.yaml")
    assert settings.work_dir == elsewhere.parent / "work"
    assert settings.catalog == elsewhere / "cat" / "catalog.duckdb"
    monkeypatch.delenv("MAVORS_CONFIG", raising=False)
    assert load_settings(None).work_dir == Path("mavors-work")  # the embedded default: ./mavors-work


def test_engine_paths_resolve_against_the_files_folder_or_the_work_dir(elsewhere):
    from inference.config import load_engine_config

    (elsewhere / "rel.yaml").write_text("model_path: ../models/x\n")
    (elsewhere / "work.yaml").write_text("model_path: '{work_dir}/models/y'\n")
    (elsewhere / "abs.yaml").write_text("model_path: /opt/z\n")
    (elsewhere / "home.yaml").write_text("model_path: ~/m\n")
    assert load_engine_config(elsewhere / "rel.yaml").model_path == elsewhere.parent / "models" / "x"
    assert load_engine_config(elsewhere / "work.yaml", "/w").model_path == Path("/w/models/y")
    assert load_engine_config(elsewhere / "abs.yaml").model_path == Path("/opt/z")
    assert load_engine_config(elsewhere / "home.yaml").model_path == Path(os.path.expanduser("~/m"))
    with pytest.raises(ConfigError, match=r"work.yaml: field 'model_path': .*names the work dir"):
        load_engine_config(elsewhere / "work.yaml")


def test_roster_engine_files_and_their_paths_resolve_against_their_own_folders(elsewhere):
    from curation.captions import load_roster

    (elsewhere / "engines").mkdir()
    (elsewhere / "engines" / "vlm.yaml").write_text("model_path: ../../models/vlm\nmodalities: [text, image]\n")
    (elsewhere / "rosters").mkdir()
    (elsewhere / "rosters" / "r.yaml").write_text(
        "captioners: [{name: a, engine: ../engines/vlm.yaml, media: [image]},\n"
        "             {name: b, engine: {model_path: inline, modalities: [text, image]}, media: [image]}]\n"
        "merger: {name: m, engine: {model_path: '{work_dir}/models/llm'}}\n")
    roster = load_roster(elsewhere / "rosters" / "r.yaml", elsewhere.parent / "work")
    assert roster.captioners[0].engine.model_path == elsewhere.parent / "models" / "vlm"   # the engine file's folder
    assert roster.captioners[1].engine.model_path == elsewhere / "rosters" / "inline"      # the roster's folder
    assert roster.merger.engine.model_path == elsewhere.parent / "work" / "models" / "llm"


def test_scorer_and_dpo_config_paths_resolve_against_their_files(elsewhere):
    from core.config import load_yaml
    from curation.perplexity import load_scorer_config
    from curation.preference.config import DpoConfig

    (elsewhere / "scorer.yaml").write_text("name: s\nengine: {model_path: m}\n")
    (elsewhere / "dpo.yaml").write_text("output_dir: out\n")
    assert load_scorer_config(elsewhere / "scorer.yaml").engine.model_path == elsewhere / "m"
    assert load_yaml(elsewhere / "dpo.yaml", DpoConfig).output_dir == elsewhere / "out"
