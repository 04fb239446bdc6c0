"""MavorsForConditionalGeneration: save/load round trip, generate, answer-only loss checked against a
manual cross-entropy, LLM initialised from Qwen2 (logits equal a plain transformers forward), splicing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from transformers import AutoModelForImageTextToText, Qwen2ForCausalLM

from model import MavorsForConditionalGeneration

CONV = [{"from": "human", "value": "<image>\nWhat moves in <video>?"}, {"from": "gpt", "value": "A red circle."}]


@pytest.fixture(scope="module")
def media():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (100, 200, 3), dtype=np.uint8), rng.integers(0, 255, (10, 48, 80, 3), dtype=np.uint8)]


@pytest.fixture(scope="module")
def batch(processor, media):
    return processor.encode_batch([CONV], [media])


def test_frame_rows_give_the_same_logits_and_loss(mavors, processor, media):
    """The frame-row layout (an image's frame once, what the training loader's workers send) gives bit-identical
    logits and loss to the F-fold tubelets, for images, sub-images, video and a text-only row in one batch."""
    rng = np.random.default_rng(1)
    convs = [CONV, [{"from": "human", "value": "<image>\n<image>\nSame?"}, {"from": "gpt", "value": "No."}],
             [{"from": "human", "value": "Two plus two?"}, {"from": "gpt", "value": "Four."}]]
    media_lists = [media, [rng.integers(0, 255, (150, 90, 3), dtype=np.uint8),
                           rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)], []]
    full = processor.encode_batch(convs, media_lists)
    rows = processor.with_frame_rows().encode_batch(convs, media_lists)
    f = processor.frames_per_chunk
    assert full["pixel_values"].numel() > rows["pixel_values"].numel() * 2  # images stored once, not F times
    assert set(rows["chunk_frames"].tolist()) == {1, f}  # image chunks store 1 frame, the video's chunks F
    assert rows["pixel_values"].shape[0] == int((full["chunk_grids"].prod(1) * rows["chunk_frames"]).sum())
    assert all(torch.equal(full[k], rows[k]) for k in full if k != "pixel_values")
    with torch.no_grad():
        a, b = mavors(**full), mavors(**rows)  # the batches carry their labels: loss too
    assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)


def test_named_submodules_for_trainers(mavors):
    names = {n for n, _ in mavors.named_children()}
    assert {"ive", "ifa", "projector", "llm"} <= names
    owned = sum(p.numel() for n in ("ive", "ifa", "projector", "llm") for p in getattr(mavors, n).parameters())
    assert owned == sum(p.numel() for p in mavors.parameters())


def test_save_load_round_trip_identical_logits(mavors, batch, tmp_path):
    mavors.save_pretrained(tmp_path / "ckpt")
    again = MavorsForConditionalGeneration.from_pretrained(tmp_path / "ckpt").eval()
    auto = AutoModelForImageTextToText.from_pretrained(tmp_path / "ckpt").eval()
    with torch.no_grad():
        ref = mavors(**batch).logits
        assert torch.equal(again(**batch).logits, ref)
        assert torch.equal(auto(**batch).logits, ref)


def test_loss_is_next_token_ce_on_answer_tokens_only(mavors, batch, processor):
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    visual = (ids == processor.image_token_id) | (ids == processor.video_token_id)
    assert labels[labels != -100].tolist() == processor.tokenizer("A red circle.<|im_end|>", add_special_tokens=False)["input_ids"]
    assert (labels[visual] == -100).all() and visual.sum() == 42
    with torch.no_grad():
        out = mavors(**batch)
    logits = out.logits[0].double()  # (L, V)
    positions = [t for t in range(1, ids.shape[0]) if labels[t] != -100]
    manual = torch.stack([-F.log_softmax(logits[t - 1], -1)[ids[t]] for t in positions]).mean()
    torch.testing.assert_close(out.loss.double(), manual, atol=1e-5, rtol=1e-5)


def test_llm_is_the_qwen2_checkpoint(mavors, tiny_models, processor):
    """Text-only input: Mavors logits equal the source Qwen2's logits (independent transformers forward)."""
    qwen = Qwen2ForCausalLM.from_pretrained(tiny_models["qwen2"]).eval()
    sample = processor.collate([processor.encode([{"from": "human", "value": "Describe the red circle."}])])
    with torch.no_grad():
        torch.testing.assert_close(mavors(**sample).logits, qwen(input_ids=sample["input_ids"]).logits)


def test_inputs_embeds_splice_text_and_visual(mavors, batch):
    with torch.no_grad():
        mi = mavors.get_inputs_embeds(**batch)
        table = mavors.get_input_embeddings().weight
        visual = mavors.encode_visual(batch["pixel_values"], batch["chunk_grids"], batch["chunk_positions"],
                                      batch["chunk_sequences"]).tokens
    assert visual.shape[0] == int(mi.visual_mask.sum()) == 24 + 18  # hand-worked in test_processing
    torch.testing.assert_close(mi.inputs_embeds[0][~mi.visual_mask[0]], table[batch["input_ids"][0][~mi.visual_mask[0]]])
    torch.testing.assert_close(mi.inputs_embeds[0][mi.visual_mask[0]], visual)
    (row,) = mi.unpadded()
    assert row["prompt_embeds"].shape == (batch["input_ids"].shape[1], mavors.config.text_config.hidden_size)
    assert row["is_token"].tolist() == (~mi.visual_mask[0]).tolist()


def test_generate_produces_greedy_tokens(mavors, processor, media):
    sample = processor.encode(CONV[:1], media, add_generation_prompt=True)
    gen = processor.collate([sample], padding_side="left")
    with torch.no_grad():
        out = mavors.generate(**gen, max_new_tokens=4, do_sample=False)
        first = mavors(**gen).logits[0, -1].argmax()
    prompt_len = gen["input_ids"].shape[1]
    assert torch.equal(out[:, :prompt_len], gen["input_ids"])  # prompt + new tokens, as transformers returns
    new = out[:, prompt_len:]
    assert new.shape[0] == 1 and 1 <= new.shape[1] <= 4
    assert new[0, 0] == first
    assert (new < mavors.config.text_config.vocab_size).all()


def test_batched_left_padding_matches_single(mavors, processor, media):
    a = processor.encode(CONV[:1], media, add_generation_prompt=True)
    b = processor.encode([{"from": "human", "value": "<image>Hi"}], media[:1], add_generation_prompt=True)
    both = processor.collate([a, b], padding_side="left")
    with torch.no_grad():
        batched = mavors(**both).logits[:, -1]
        singles = torch.cat([mavors(**processor.collate([s])).logits[:, -1] for s in (a, b)])
    torch.testing.assert_close(batched, singles, atol=1e-4, rtol=1e-4)


def test_trainable_forward_backward_reaches_every_module(mavors_dir, batch):
    model = MavorsForConditionalGeneration.from_pretrained(mavors_dir)
    model.llm.requires_grad_(False)
    model(**batch).loss.backward()
    for name in ("ive", "ifa", "projector"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, name).parameters()), name
    assert all(p.grad is None for p in model.llm.parameters())


def test_text_only_training_step_reaches_the_vision_path_with_zero(mavors_dir, tiny_models, processor):
    """Training on a text-only batch runs IVE/IFA/projector on a zero chunk (what keeps DeepSpeed ranks in step,
    tests/trainers/test_mixed_ranks.py): logits equal the plain Qwen2's, every vision parameter gets a gradient
    of exactly 0, and the LLM's gradients equal those of the same backward without that path."""
    model = MavorsForConditionalGeneration.from_pretrained(mavors_dir).train()
    qwen = Qwen2ForCausalLM.from_pretrained(tiny_models["qwen2"]).eval()
    sample = processor.collate([processor.encode([{"from": "human", "value": "Name a colour."},
                                                  {"from": "gpt", "value": "red"}])])
    logits = model(**sample).logits
    torch.testing.assert_close(logits, qwen(input_ids=sample["input_ids"]).logits, rtol=0, atol=0)
    logits.logsumexp(-1).sum().backward()
    for name in ("ive", "ifa", "projector"):
        assert all(p.grad is not None and not p.grad.any() for p in getattr(model, name).parameters()), name
    plain = MavorsForConditionalGeneration.from_pretrained(mavors_dir).eval()  # eval: no zero chunk
    plain(**sample).logits.logsumexp(-1).sum().backward()
    assert all(p.grad is None for m in ("ive", "ifa", "projector") for p in getattr(plain, m).parameters())
    for (name, p), q in zip(model.llm.named_parameters(), plain.llm.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_placeholder_count_mismatch_is_an_error(mavors, batch):
    ids = batch["input_ids"].clone()
    ids[0, (ids[0] == mavors.config.video_token_id).nonzero()[0]] = 0  # drop one placeholder
    with pytest.raises(ValueError, match="visual placeholders"):
        mavors.get_inputs_embeds(**{**batch, "input_ids": ids})
