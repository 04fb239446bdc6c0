"""Hugging Face interop of an export: ``AutoProcessor`` gives the Mavors processor, its standard
``__call__(text=, images=, videos=)`` feeds ``generate``, and ``generate`` returns prompt + new tokens, so
``out[:, input_len:]`` is what an independent greedy loop over the model's forward produces."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from tests.model.conftest import randomize_

QUESTION = "What shape is it?"


@pytest.fixture(scope="module")
def export(mavors, processor, tmp_path_factory):
    """An export as trainers/export.py writes it: save_pretrained of model and processor in one folder (weights
    randomized so that greedy decoding does not repeat one token)."""
    path = tmp_path_factory.mktemp("export")
    randomize_(copy.deepcopy(mavors), seed=3).save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def auto(export):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import model.modeling  # noqa: F401  (registers the Auto classes)
    import model.processing  # noqa: F401

    return AutoProcessor.from_pretrained(export), AutoModelForImageTextToText.from_pretrained(export).eval()


def _messages(kind: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": QUESTION}]}]


def _greedy(model, inputs, steps: int, eos: int) -> list[int]:
    """Next token = argmax of a full forward over prompt + tokens so far, until EOS or ``steps``."""
    ids, mask, new = inputs["input_ids"], inputs["attention_mask"], []
    visual = {k: inputs[k] for k in ("pixel_values", "chunk_grids", "chunk_positions", "chunk_sequences")}
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(input_ids=ids, attention_mask=mask, **visual).logits[0, -1].argmax())
            new.append(token)
            if token == eos:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], dim=1)
    return new


def test_auto_processor_call_generate_matches_greedy_forward(auto, rng):
    proc, model = auto
    assert type(proc).__name__ == "MavorsProcessor" and type(model).__name__ == "MavorsForConditionalGeneration"
    img = Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8))
    text = proc.apply_chat_template(_messages("image"), add_generation_prompt=True, tokenize=False)
    inputs = proc(text=[text], images=[img], return_tensors="pt")
    assert set(inputs) == {"input_ids", "attention_mask", "pixel_values", "chunk_grids", "chunk_positions",
                           "chunk_sequences"}
    # the same ids and pixels as the processor's own message path (placeholder expanded to the image's tokens)
    ref = proc.encode_messages([{"role": "user", "content": [{"type": "image", "image": img},
                                                             {"type": "text", "text": QUESTION}]}],
                               add_generation_prompt=True)
    assert inputs["input_ids"][0].tolist() == ref["input_ids"].tolist()
    torch.testing.assert_close(inputs["pixel_values"], ref["pixel_values"])

    eos = proc.tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=eos,
                             pad_token_id=proc.tokenizer.pad_token_id)
    input_len = inputs["input_ids"].shape[1]
    assert torch.equal(out[:, :input_len], inputs["input_ids"])
    expected = _greedy(model, inputs, 6, eos)
    assert len(set(expected)) > 1
    assert out[0, input_len:].tolist()[:len(expected)] == expected
    assert proc.batch_decode(out[:, input_len:], skip_special_tokens=True)[0] == proc.decode(expected)


def test_batched_call_with_image_and_video_left_padded(auto, rng):
    """Two texts, media listed in placeholder order over the batch; each row generates what it does alone."""
    proc, model = auto
    img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    video = rng.integers(0, 255, (8, 48, 48, 3), dtype=np.uint8)
    texts = [proc.apply_chat_template(_messages(kind), add_generation_prompt=True, tokenize=False)
             for kind in ("video", "image")]
    both = proc(text=texts, images=[img], videos=[video], padding_side="left")
    assert both["attention_mask"][:, -1].tolist() == [1, 1]
    with torch.no_grad():
        batched = model.generate(**both, max_new_tokens=3, do_sample=False)[:, both["input_ids"].shape[1]:]
        for row, (text, media) in enumerate(((texts[0], {"videos": [video]}), (texts[1], {"images": [img]}))):
            alone = proc(text=text, **media)
            single = model.generate(**alone, max_new_tokens=3, do_sample=False)[:, alone["input_ids"].shape[1]:]
            assert batched[row, :single.shape[1]].tolist() == single[0].tolist()


def test_call_refuses_media_placeholders_mismatch(auto, rng):
    proc, _ = auto
    img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="1 image"):
        proc(text="no placeholder here", images=[img])
    with pytest.raises(ValueError, match=r"text 0: more <\|image_pad\|> placeholders than images given"):
        proc(text="<|image_pad|> and <|image_pad|>", images=[img])
    with pytest.raises(ValueError, match="return_tensors='np'"):
        proc(text="hi", return_tensors="np")
