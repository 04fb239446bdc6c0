"""vLLM (CPU build, in-process) agrees with transformers on the same tiny checkpoints, in float32.

    pytest tests/inference/test_vllm_engine.py -q     # ~1.5 min: import vllm + two tiny engines
"""
from __future__ import annotations

import math

import torch

from inference import ChatRequest, SamplingParams


def outputs(results):
    return [[(c.text, c.finish_reason, c.n_tokens, c.token_ids) for c in r.completions] for r in results]


def test_greedy_agrees_with_transformers_text(vllm_text, hf_text, text_requests):
    params = SamplingParams(max_tokens=16)
    v, h = vllm_text.generate(text_requests, params), hf_text.generate(text_requests, params)
    assert outputs(v) == outputs(h)
    assert [r.prompt_tokens for r in v] == [r.prompt_tokens for r in h]


def test_greedy_agrees_with_transformers_image_and_video(vllm_vl, hf_vl, media_requests):
    params = SamplingParams(max_tokens=12)
    v, h = vllm_vl.generate(media_requests, params), hf_vl.generate(media_requests, params)
    assert outputs(v) == outputs(h)
    assert [r.prompt_tokens for r in v] == [r.prompt_tokens for r in h]


def assert_scores_agree(v, h):
    for a, b in zip(v, h):
        assert a.token_ids == b.token_ids
        assert a.mask == b.mask and any(a.mask)
        assert a.greedy == b.greedy and len(a.greedy) == len(a.token_ids)
        assert math.isnan(a.logprobs[0]) and math.isnan(b.logprobs[0])
        torch.testing.assert_close(torch.tensor(a.logprobs[1:]), torch.tensor(b.logprobs[1:]), atol=1e-4, rtol=0)


def test_prompt_logprobs_agree_text(vllm_text, hf_text):
    requests = [
        ChatRequest("a", [{"role": "user", "content": "Describe the clip."},
                          {"role": "assistant", "content": "A red circle moves left, then stops."}]),
        ChatRequest("b", [{"role": "user", "content": "How many?"}, {"role": "assistant", "content": "Three."}]),
    ]
    assert_scores_agree(vllm_text.score(requests), hf_text.score(requests))


def test_prompt_logprobs_agree_with_image(vllm_vl, hf_vl, image):
    requests = [ChatRequest("i", [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Describe it."}]},
        {"role": "assistant", "content": "A bright square on a dark background."}])]
    v, h = vllm_vl.score(requests), hf_vl.score(requests)
    assert v[0].token_ids.count(hf_vl.tokenizer.convert_tokens_to_ids("<|image_pad|>")) > 1
    assert_scores_agree(v, h)


def test_n_samples_in_one_call_seeded(vllm_text, text_requests):
    params = SamplingParams(temperature=1.0, n=4, max_tokens=8, seed=3)
    a = vllm_text.generate(text_requests[:2], params)
    assert [len(r.completions) for r in a] == [4, 4]
    assert len({c.text for c in a[0].completions}) > 1
    assert outputs(a) == outputs(vllm_text.generate(text_requests[:2], params))


def test_stop_string_and_length(vllm_text, text_requests):
    [free] = vllm_text.generate(text_requests[:1], SamplingParams(max_tokens=8))
    assert free.completions[0].finish_reason == "length" and free.completions[0].n_tokens == 8
    text = free.completions[0].text
    [stopped] = vllm_text.generate(text_requests[:1], SamplingParams(max_tokens=8, stop=(text[3:5],)))
    assert stopped.completions[0].finish_reason == "stop"
    assert stopped.completions[0].text == text[:text.find(text[3:5])]
