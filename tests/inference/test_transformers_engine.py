"""The transformers backend against plain transformers calls; the loader's refusals.

    pytest tests/inference/test_transformers_engine.py -q
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from inference import ChatRequest, EngineConfig, EngineError, SamplingParams, load_engine


def with_batch_size(engine, n):
    """The same loaded engine with another batch size (no reload)."""
    engine.config = engine.config.model_copy(update={"batch_size": n})
    return engine


def test_greedy_identical_across_batch_sizes(hf_text, hf_vl, text_requests, media_requests):
    params = SamplingParams(max_tokens=8)
    for engine, requests in ((hf_text, text_requests), (hf_vl, media_requests)):
        by_size = {}
        for n in (1, len(requests)):
            by_size[n] = [[(c.text, c.finish_reason, c.n_tokens) for c in r.completions]
                          for r in with_batch_size(engine, n).generate(requests, params)]
        assert by_size[1] == by_size[len(requests)]
        with_batch_size(engine, 3)


def test_greedy_matches_plain_generate(hf_text, sharp_models, text_requests):
    tok = AutoTokenizer.from_pretrained(sharp_models["qwen2"])
    model = AutoModelForCausalLM.from_pretrained(sharp_models["qwen2"], dtype=torch.float32)
    results = hf_text.generate(text_requests, SamplingParams(max_tokens=10))
    for request, result in zip(text_requests, results):
        ids = tok.apply_chat_template(request.messages, add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
        out = model.generate(ids, max_new_tokens=10, do_sample=False)[0, ids.shape[1]:]
        assert result.prompt_tokens == ids.shape[1]
        assert result.completions[0].text == tok.decode(out, skip_special_tokens=True)


def scored_conversations():
    return [
        ChatRequest("s0", [{"role": "user", "content": "Describe the clip."},
                           {"role": "assistant", "content": "A red circle moves left."}]),
        ChatRequest("s1", [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "What is there?"},
                           {"role": "assistant", "content": "Two squares."},
                           {"role": "user", "content": "And then?"},
                           {"role": "assistant", "content": "They disappear slowly at the end of the video."}]),
        ChatRequest("s2", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes"}]),
    ]


def test_batched_scoring_equals_one_by_one_and_plain_forward(hf_text, sharp_models):
    requests = scored_conversations()
    batched = with_batch_size(hf_text, 3).score(requests)
    single = [with_batch_size(hf_text, 1).score([r])[0] for r in requests]
    with_batch_size(hf_text, 3)
    tok = AutoTokenizer.from_pretrained(sharp_models["qwen2"])
    model = AutoModelForCausalLM.from_pretrained(sharp_models["qwen2"], dtype=torch.float32)
    for request, b, s in zip(requests, batched, single):
        assert b.token_ids == s.token_ids
        assert b.mask == s.mask
        torch.testing.assert_close(torch.tensor(b.logprobs[1:]), torch.tensor(s.logprobs[1:]), atol=1e-5, rtol=0)
        # independent: template -> ids -> forward -> log_softmax -> gather
        ids = tok(tok.apply_chat_template(request.messages, tokenize=False), add_special_tokens=False,
                  return_tensors="pt")["input_ids"]
        assert b.token_ids == ids[0].tolist()
        with torch.no_grad():
            ref_all = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)  # (L-1, V)
        ref = ref_all.gather(-1, ids[0, 1:, None])[:, 0]
        assert math.isnan(b.logprobs[0])
        assert b.greedy == s.greedy == [False] + (ref_all.argmax(-1) == ids[0, 1:]).tolist()
        torch.testing.assert_close(torch.tensor(b.logprobs[1:]), ref, atol=1e-5, rtol=0)
        # the mask covers exactly the assistant answers' text
        answers = "".join(m["content"] for m in request.messages if m["role"] == "assistant")
        assert tok.decode([t for t, m in zip(b.token_ids, b.mask) if m]) == answers
        ref_ppl = math.exp(-ref[torch.tensor(b.mask[1:])].mean().item())
        assert b.perplexity() == pytest.approx(ref_ppl, rel=1e-4)


def test_scoring_other_roles_and_media(hf_vl, image):
    request = ChatRequest("m", [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A square."}])
    [user] = hf_vl.score([request], score_roles=("user",))
    tok = hf_vl.tokenizer
    assert tok.decode([t for t, m in zip(user.token_ids, user.mask) if m]) == "What is it?"
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    n_visual = user.token_ids.count(image_pad)
    assert n_visual > 1  # placeholders were expanded and none is scored
    assert not any(m for t, m in zip(user.token_ids, user.mask) if t == image_pad)


def test_finish_reasons(hf_text, sharp_models, tmp_path, text_requests):
    request = text_requests[0]
    [free] = hf_text.generate([request], SamplingParams(max_tokens=8))
    assert free.completions[0].finish_reason == "length" and free.completions[0].n_tokens == 8
    text = free.completions[0].text
    stop = text[3:5]
    [stopped] = hf_text.generate([request], SamplingParams(max_tokens=8, stop=(stop,)))
    assert stopped.completions[0].finish_reason == "stop"
    assert stopped.completions[0].text == text[:text.find(stop)]
    # A checkpoint whose EOS is the first greedy token stops at once: "stop", one token, no text.
    tok = AutoTokenizer.from_pretrained(sharp_models["qwen2"])
    ids = tok.apply_chat_template(request.messages, add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    with torch.no_grad():
        first = int(AutoModelForCausalLM.from_pretrained(sharp_models["qwen2"])(ids).logits[0, -1].argmax())
    copy = shutil.copytree(sharp_models["qwen2"], tmp_path / "eos-copy")
    gen = json.loads((copy / "generation_config.json").read_text())
    (copy / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": first}))
    engine = load_engine(EngineConfig(model_path=copy))
    [eos] = engine.generate([request], SamplingParams(max_tokens=8))
    assert dataclasses.astuple(eos.completions[0]) == ("", "stop", 1, (first,))


def test_sampling_n_and_seed(hf_text, text_requests):
    params = SamplingParams(temperature=1.0, n=3, max_tokens=6, seed=7)
    a = hf_text.generate(text_requests[:2], params)
    b = hf_text.generate(text_requests[:2], params)
    assert [len(r.completions) for r in a] == [3, 3]
    assert a == b
    assert len({c.text for c in a[0].completions}) > 1


def test_missing_or_unloadable_model_fails_naming_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(EngineError, match=str(missing)):
        load_engine(EngineConfig(model_path=missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EngineError, match=f"{empty}.*config.json"):
        load_engine(EngineConfig(model_path=empty, backend="vllm"))
    (empty / "config.json").write_text("{not json")
    with pytest.raises(EngineError, match=str(empty)):
        load_engine(EngineConfig(model_path=empty))


def test_refuses_media_the_engine_does_not_take(hf_text, image):
    request = ChatRequest("x", [{"role": "user", "content": [{"type": "image", "image": image}]}])
    with pytest.raises(EngineError, match="request x: image input"):
        hf_text.generate([request], SamplingParams(max_tokens=2))
