"""The package's public names load on first use: curation imports `MediaError` without torch."""
from __future__ import annotations

import subprocess
import sys

import pytest


def test_media_error_comes_without_torch():
    code = "import sys, model.preprocessing; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_public_names_resolve_to_their_modules():
    import model
    from model.modeling import MavorsForConditionalGeneration
    from model.preprocessing import MediaError

    assert (model.MavorsForConditionalGeneration, model.MediaError) == (MavorsForConditionalGeneration, MediaError)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        model.Nope
