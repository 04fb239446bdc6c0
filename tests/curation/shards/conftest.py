"""Fixtures of the shard tests (helpers: ``shard_corpus``)."""
from __future__ import annotations

from pathlib import Path

import pytest

from shard_corpus import make_base_catalog


@pytest.fixture(scope="session")
def base_catalog(tmp_path_factory) -> Path:
    """The shard corpus catalog (see :func:`shard_corpus.make_base_catalog`); tests copy it before writing."""
    return make_base_catalog(tmp_path_factory.mktemp("corpus"))
