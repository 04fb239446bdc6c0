"""Fixtures for the model tests: the tiny Mavors checkpoint (built by make_tiny with model.conversion),
its processor, and small media helpers. Run: pytest tests/model -q"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def mavors_dir(tiny_models) -> Path:
    return tiny_models["mavors"]


@pytest.fixture(scope="session")
def mavors(mavors_dir):
    from model import MavorsForConditionalGeneration

    return MavorsForConditionalGeneration.from_pretrained(mavors_dir).eval()


@pytest.fixture(scope="session")
def processor(mavors_dir):
    from model import MavorsProcessor

    return MavorsProcessor.from_pretrained(mavors_dir)


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Overwrite every parameter with seeded noise (so zero-initialised branches are exercised)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


def write_video(path: Path, frames: np.ndarray, fps: int = 30, codec: str = "mpeg4") -> Path:
    """Encode uint8 (T, H, W, 3) frames with PyAV."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)
