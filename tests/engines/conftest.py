"""Engine fixtures: tiny media, and vLLM engines loaded once per session (``import vllm`` alone is ~16 s)."""
from __future__ import annotations

import numpy as np
import pytest

from curation.engines import ChatRequest, EngineConfig, load_engine

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


@pytest.fixture(scope="session")
def hf_text(tiny_models):
    return load_engine(EngineConfig(backend="transformers", model_path=tiny_models["qwen2"], batch_size=3))


@pytest.fixture(scope="session")
def hf_vl(tiny_models):
    return load_engine(EngineConfig(backend="transformers", model_path=tiny_models["qwen2vl"],
                                    modalities=MULTIMODAL, batch_size=3))


@pytest.fixture(scope="session")
def vllm_text(tiny_models):
    engine = load_engine(EngineConfig(backend="vllm", model_path=tiny_models["qwen2"], max_model_len=512))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def vllm_vl(tiny_models):
    engine = load_engine(EngineConfig(backend="vllm", model_path=tiny_models["qwen2vl"], max_model_len=512,
                                      modalities=MULTIMODAL))
    yield engine
    engine.close()
