"""Engine fixtures: tiny media, and vLLM engines loaded once per session (``import vllm`` alone is ~16 s)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from inference import ChatRequest, EngineConfig, load_engine

MULTIMODAL = ["text", "image", "video"]


@pytest.fixture(scope="session")
def image():
    from PIL import Image

    return Image.fromarray((np.random.RandomState(0).rand(56, 84, 3) * 255).astype("uint8"))


@pytest.fixture(scope="session")
def video():
    return (np.random.RandomState(1).rand(4, 56, 56, 3) * 255).astype("uint8")  # (T, H, W, 3)


@pytest.fixture(scope="session")
def text_requests() -> list[ChatRequest]:
    """Prompts of different lengths, so batches carry padding."""
    prompts = ["Describe the video.", "What color is the circle in the top left of the frame?", "Hi",
               "A red square moves left, then a blue circle appears. What happens next?"]
    return [ChatRequest(f"t{i}", [{"role": "user", "content": p}]) for i, p in enumerate(prompts)]


@pytest.fixture(scope="session")
def media_requests(image, video) -> list[ChatRequest]:
    return [
        ChatRequest("img", [{"role": "user", "content": [{"type": "image", "image": image},
                                                         {"type": "text", "text": "Describe the image."}]}]),
        ChatRequest("vid", [{"role": "user", "content": [{"type": "video", "video": video},
                                                         {"type": "text", "text": "What moves?"}]}]),
        ChatRequest("txt", [{"role": "user", "content": "Count the shapes."}]),
    ]


def sharpen(src: Path, dst: Path, model_cls) -> Path:
    """A copy of a tiny checkpoint with its matrices redrawn at std 0.15.

    The shipped tiny models are initialised at std 0.02, so their greedy output is one token
    repeated; comparing two backends on that would prove little. Sharper weights give varied text.
    """
    shutil.copytree(src, dst)
    model = model_cls.from_pretrained(src, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.15)
    model.save_pretrained(dst)
    return dst


@pytest.fixture(scope="session")
def sharp_models(tiny_models, tmp_path_factory) -> dict[str, Path]:
    from transformers import Qwen2ForCausalLM, Qwen2VLForConditionalGeneration

    root = tmp_path_factory.mktemp("sharp-models")
    return {"qwen2": sharpen(tiny_models["qwen2"], root / "qwen2", Qwen2ForCausalLM),
            "qwen2vl": sharpen(tiny_models["qwen2vl"], root / "qwen2vl", Qwen2VLForConditionalGeneration)}


@pytest.fixture(scope="session")
def hf_text(sharp_models):
    return load_engine(EngineConfig(backend="transformers", model_path=sharp_models["qwen2"], batch_size=3,
                                    torch_threads=1))


@pytest.fixture(scope="session")
def hf_vl(sharp_models):
    return load_engine(EngineConfig(backend="transformers", model_path=sharp_models["qwen2vl"],
                                    modalities=MULTIMODAL, batch_size=3))


@pytest.fixture(scope="session")
def vllm_text(sharp_models):
    engine = load_engine(EngineConfig(backend="vllm", model_path=sharp_models["qwen2"], max_model_len=512))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def vllm_vl(sharp_models):
    engine = load_engine(EngineConfig(backend="vllm", model_path=sharp_models["qwen2vl"], max_model_len=512,
                                      modalities=MULTIMODAL))
    yield engine
    engine.close()
