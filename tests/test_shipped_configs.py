"""Every YAML the project ships loads against its config model (litgpt's test_config_hub idea).

A new folder under manifests/ must be added to LOADERS, so no shipped file goes unchecked.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from core.paths import REPO_ROOT

ROOT = REPO_ROOT
WORK_DIR = Path("/srv/mavors-work")


def _loaders():
    from benchmarks.capacity import Profiles
    from curation.captions import load_roster
    from core.config import load_yaml
    from curation.dedup import load_policy
    from inference.config import load_engine_config
    from curation.mixtures import load_mixture
    from curation.perplexity import load_scorer_config
    from curation.preference.config import DpoConfig
    from core.settings import Settings
    from curation.sources import load_manifest
    from trainers.spec import load_stage

    work = WORK_DIR  # what {work_dir} in the demo's engine paths means
    return {
        "manifests/sources": load_manifest,
        "manifests/engines": lambda p: load_engine_config(p, work),
        "manifests/captioners": lambda p: load_roster(p, work),
        "manifests/dedup": load_policy,
        "manifests/dedup/scorers": lambda p: load_scorer_config(p, work),
        "manifests/mixtures": load_mixture,
        "manifests/stages": load_stage,
        "manifests/dpo": lambda p: load_yaml(p, DpoConfig),
        "manifests/capacity": lambda p: load_yaml(p, Profiles),
        "infra/settings": lambda p: load_yaml(p, Settings),
    }


# lmms-eval task templates use lmms-eval's own YAML tags; tests/eval renders and runs them.
NOT_OURS = {"manifests/eval/tasks"}
SHIPPED = sorted(p for p in [*ROOT.glob("manifests/**/*.yaml"), *ROOT.glob("infra/settings/*.yaml")]
                 if str(p.parent.relative_to(ROOT)) not in NOT_OURS)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_yaml_loads(path):
    folder = str(path.parent.relative_to(ROOT))
    loaders = _loaders()
    assert folder in loaders, f"{path}: no config model registered for {folder}/ in tests/test_shipped_configs.py"
    config = loaders[folder](path)
    # Every path a loaded config holds is absolute: none depends on the working directory.
    for value in _paths(config):
        assert value.is_absolute(), (path, value)


def _paths(value):
    """Every Path inside a loaded config model (nested models, lists, dicts)."""
    from pydantic import BaseModel

    if isinstance(value, Path):
        yield value
    elif isinstance(value, BaseModel):
        for v in dict(value).values():
            yield from _paths(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _paths(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _paths(v)

