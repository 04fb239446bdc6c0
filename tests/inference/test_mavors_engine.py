"""The Mavors backend: vision in torch, LLM in vLLM via prompt embeddings, against the model's own torch path.

    pytest tests/inference/test_mavors_engine.py -q
"""
from __future__ import annotations

import math

import pytest
import torch

from inference import ChatRequest, EngineConfig, EngineError, SamplingParams, load_engine


@pytest.fixture(scope="module")
def mavors_engines(tiny_models):
    base = dict(backend="mavors", model_path=tiny_models["mavors"], modalities=["text", "image", "video"],
                max_model_len=1024)
    hf = load_engine(EngineConfig(**base, llm_backend="transformers"))
    vl = load_engine(EngineConfig(**base, llm_backend="vllm"))
    yield hf, vl
    vl.close()
    hf.close()


@pytest.fixture(scope="module")
def requests_(video, image):
    return [
        ChatRequest("v", [{"role": "user", "content": [{"type": "video", "video": video},
                                                       {"type": "text", "text": "What moves?"}]}]),
        ChatRequest("i", [{"role": "user", "content": [{"type": "image", "image": image},
                                                       {"type": "text", "text": "Describe it."}]}]),
        ChatRequest("t", [{"role": "user", "content": "Count the shapes."}]),
    ]


def test_generation_matches_model_generate_and_vllm(mavors_engines, requests_):
    hf, vl = mavors_engines
    params = SamplingParams(max_tokens=8)
    h, v = hf.generate(requests_, params), vl.generate(requests_, params)
    assert [[c.token_ids for c in r.completions] for r in h] == [[c.token_ids for c in r.completions] for r in v]
    assert [r.prompt_tokens for r in h] == [r.prompt_tokens for r in v]
    for request, result in zip(requests_, h):  # independent: the model's own generate on a processor batch
        sample = hf.processor.encode_messages(hf._messages(request), add_generation_prompt=True)
        batch = hf.processor.collate([sample], padding_side="left")
        ref = hf.model.generate(**batch, max_new_tokens=8, do_sample=False)[0, batch["input_ids"].shape[1]:].tolist()
        assert list(result.completions[0].token_ids) == ref[:len(result.completions[0].token_ids)]


def test_prompt_logprobs_with_embeddings_match_torch_forward(mavors_engines, video):
    hf, vl = mavors_engines
    request = ChatRequest("s", [
        {"role": "user", "content": [{"type": "video", "video": video}, {"type": "text", "text": "What moves?"}]},
        {"role": "assistant", "content": "A red circle moves left."}])
    [h], [v] = hf.score([request]), vl.score([request])
    sample = hf.processor.encode_messages(hf._messages(request))
    batch = hf.processor.collate([sample])
    with torch.no_grad():
        logits = hf.model(**batch).logits[0].float()  # (L, V)
    ids = batch["input_ids"][0]
    ref = torch.log_softmax(logits[:-1], -1).gather(-1, ids[1:, None])[:, 0]
    assert h.token_ids == v.token_ids == ids.tolist()
    assert math.isnan(v.logprobs[0])
    torch.testing.assert_close(torch.tensor(h.logprobs[1:]), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(v.logprobs[1:]), ref, atol=1e-4, rtol=0)
    assert hf.tokenizer.decode([t for t, m in zip(h.token_ids, h.mask) if m]) == "A red circle moves left."
    assert h.mask == v.mask
    greedy = [False] + (logits[:-1].argmax(-1) == ids[1:]).tolist()
    assert h.greedy == v.greedy == greedy
    with pytest.raises(EngineError, match="assistant turns only"):
        hf.score([request], score_roles=("user",))
