"""Processor: ChatML rendering equals the shared tokenizer's chat template, answer-only labels, visual
token counts worked by hand, PyAV decoding at the fixed fps, frame dropping, collate, media errors.

Tiny config: R_v = 64, patch 16, F = 4, 2 fps, at most 8 chunks, at most 4 sub-images."""
from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from model.conversation import conversation_to_messages
from model import MediaError, MavorsProcessor
from demo.tiny_models import CHAT_TEMPLATE
from tests.model.conftest import write_video

CONV = [
    {"from": "system", "value": "You are helpful."},
    {"from": "human", "value": "<image>\nWhat is  in this? Count 3 things."},
    {"from": "gpt", "value": " A red circle moves left.\nYes"},
    {"from": "human", "value": "And then <video> here?"},
    {"from": "gpt", "value": "Bounces."},
]


def collapse_visual_runs(ids: list[int], pads: set[int]) -> list[int]:
    return [t for i, t in enumerate(ids) if not (t in pads and i and ids[i - 1] == t)]


def test_rendering_equals_shared_chat_template(processor, rng):
    """The processor tokenizes piecewise (for labels); the reference renders the whole conversation with
    the tokenizer's own chat template and tokenizes it in one go."""
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    video = rng.integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    sample = processor.encode(CONV, [image, video])
    messages = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str)
                 else [p if p["type"] == "text" else {"type": p["type"]} for p in m["content"]]}
                for m in conversation_to_messages(CONV, [image, video])]
    tok = processor.tokenizer
    assert tok.chat_template == CHAT_TEMPLATE
    expected = tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    ids = sample["input_ids"].tolist()
    assert collapse_visual_runs(ids, {processor.image_token_id, processor.video_token_id}) == expected
    # generation prompt appended after the last user turn
    gen = processor.encode(CONV[:2], [image], add_generation_prompt=True)["input_ids"].tolist()
    ref = tok(tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True),
              add_special_tokens=False)["input_ids"]
    assert collapse_visual_runs(gen, {processor.image_token_id}) == ref


def test_labels_cover_only_answers(processor, rng):
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    video = rng.integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    s = processor.encode(CONV, [image, video])
    labels, ids = s["labels"], s["input_ids"]
    trained = labels != -100
    assert torch.equal(labels[trained], ids[trained])
    assert processor.tokenizer.decode(labels[trained]) == " A red circle moves left.\nYes<|im_end|>Bounces.<|im_end|>"
    visual = (ids == processor.image_token_id) | (ids == processor.video_token_id)
    assert visual.any() and not trained[visual].any()


def test_visual_token_count_is_chunks_times_pooled_grid(processor, rng):
    """200x100 image: N_s = 20000 // 4096 = 4 (cap 4) -> counts 3, 4: |log 2 - log 3| = 0.41 beats 2x2 / 4x1
    (0.69) -> 3x1. Thumbnail 64*sqrt(2) = 90.5 -> 5.7 -> 6 patches wide, 45.3 -> 2.8 -> 3 high -> pooled 3x2 = 6.
    Sub-image 66.7x100 > 64^2 -> 52.3 -> 3.3 -> 3 wide, 78.4 -> 4.9 -> 5 high -> pooled 2x3 = 6, three of them.
    Video 80x48, 10 frames: 5x3 patches -> pooled 3x2 = 6 per chunk, ceil(10/4) = 3 chunks -> 18."""
    image = rng.integers(0, 255, (100, 200, 3), dtype=np.uint8)
    video = rng.integers(0, 255, (10, 48, 80, 3), dtype=np.uint8)
    s = processor.encode([{"from": "human", "value": "<image><video>"}], [image, video])
    assert int((s["input_ids"] == processor.image_token_id).sum()) == 6 + 3 * 6
    assert int((s["input_ids"] == processor.video_token_id).sum()) == 3 * 6
    assert s["chunk_grids"].tolist() == [[3, 6], [5, 3], [5, 3], [5, 3], [3, 5], [3, 5], [3, 5]]
    assert s["chunk_positions"].tolist() == [0, 0, 0, 0, 0, 1, 2]
    assert s["chunk_sequences"].tolist() == [0, 1, 2, 3, 4, 4, 4]  # sub-images separate, video one sequence
    f, p = processor.frames_per_chunk, processor.patch_size
    assert s["pixel_values"].shape == (18 + 15 + 15 + 15 + 3 * 15, 3 * f * p * p)


def test_mp4_is_resampled_to_fixed_fps(processor, tmp_path):
    """90 frames at 30 fps (3 s), frame i is gray level 2i. At 2 fps: t = 0, 0.5, ..., 2.5 -> source frames
    0, 15, ..., 75 (gray 0, 30, ..., 150); F = 4 -> 2 chunks, the second padded with its last frame."""
    frames = np.stack([np.full((64, 64, 3), 2 * i, np.uint8) for i in range(90)])
    path = write_video(tmp_path / "gray.mp4", frames)
    s = processor.encode([{"from": "human", "value": "<video>"}], [path])
    assert s["chunk_positions"].tolist() == [0, 1]
    f, p = processor.frames_per_chunk, processor.patch_size
    tub = s["pixel_values"].view(2, 16, 3, f, p, p)  # (chunk, patch, C, F, p, p)
    gray = ((tub * 0.5 + 0.5) * 255).mean(dim=(1, 2, 4, 5))  # (chunk, F)
    expected = torch.tensor([[0.0, 30, 60, 90], [120, 150, 150, 150]])
    torch.testing.assert_close(gray, expected, atol=4.0, rtol=0)
    assert int((s["input_ids"] == processor.video_token_id).sum()) == 2 * 4


def test_long_video_drops_frames_but_keeps_timeline(processor):
    """40 frames (already 2 fps), max 2 chunks of 4 -> keep 8 at round(i*39/7) = 0, 6, 11, 17, 22, 28, 33, 39;
    C-RoPE ids floor(0/4) = 0 and floor(22/4) = 5."""
    video = np.stack([np.full((64, 64, 3), 5 * i, np.uint8) for i in range(40)])
    proc = MavorsProcessor(processor.tokenizer, **{**processor.settings(), "max_chunks": 2})
    s = proc.encode([{"from": "human", "value": "<video>"}], [video])
    assert s["chunk_positions"].tolist() == [0, 5]
    f, p = proc.frames_per_chunk, proc.patch_size
    tub = s["pixel_values"].view(2, 16, 3, f, p, p)
    level = ((tub * 0.5 + 0.5) * 255).mean(dim=(1, 2, 4, 5)).flatten() / 5
    torch.testing.assert_close(level, torch.tensor([0.0, 6, 11, 17, 22, 28, 33, 39]), atol=1e-3, rtol=0)


def test_collate_pads_and_offsets_sequences(processor, rng):
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    a = processor.encode([{"from": "human", "value": "<image>Hi"}, {"from": "gpt", "value": "Yes."}], [image])
    b = processor.encode([{"from": "human", "value": "<image><image>What is the long question here?"}],
                         [image, image])
    for side in ("left", "right"):
        batch = processor.collate([a, b], padding_side=side)
        n = b["input_ids"].shape[0] - a["input_ids"].shape[0]
        pads = slice(0, n) if side == "left" else slice(a["input_ids"].shape[0], None)
        assert (batch["input_ids"][0, pads] == processor.pad_token_id).all()
        assert (batch["attention_mask"][0, pads] == 0).all() and (batch["labels"][0, pads] == -100).all()
        assert batch["attention_mask"][1].all()
        assert batch["chunk_sequences"].tolist() == [0, 1, 2]
        assert batch["pixel_values"].shape[0] == 3 * 16


def test_media_errors_name_the_item(processor, tmp_path):
    human = [{"from": "human", "value": "<video>"}]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"definitely not a video")
    with pytest.raises(MediaError, match="broken.mp4: cannot"):
        processor.encode(human, [broken])
    with pytest.raises(MediaError, match="video #1: cannot"):
        processor.encode(human, [b"\x00\x01garbage"])
    with pytest.raises(MediaError, match="zero-length video"):
        processor.encode(human, [_video_without_frames(tmp_path / "empty.mkv")])
    with pytest.raises(MediaError, match="video has no frames"):
        processor.encode(human, [np.zeros((0, 64, 64, 3), np.uint8)])
    with pytest.raises(MediaError, match="10x12 is smaller than one 16x16 patch"):
        processor.encode([{"from": "human", "value": "<image>"}], [np.zeros((12, 10, 3), np.uint8)])
    with pytest.raises(MediaError, match="8x8 frames are smaller than one 16x16 patch"):  # the shard build's rule
        processor.encode(human, [np.zeros((4, 8, 8, 3), np.uint8)])
    with pytest.raises(MediaError, match="image #1: cannot decode image"):
        processor.encode([{"from": "human", "value": "<image>"}], [b"not an image"])
    with pytest.raises(ValueError, match="more <image>/<video> placeholders than media"):
        processor.encode([{"from": "human", "value": "<image>"}], [])


def _video_without_frames(path):
    """A Matroska file whose video stream has no packets (only audio was written)."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=30)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        audio = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*audio.encode(frame), *audio.encode(), *video.encode()]:
            out.mux(packet)
    return path


def test_save_and_load_keeps_settings(processor, tmp_path):
    processor.save_pretrained(tmp_path / "proc")
    again = MavorsProcessor.from_pretrained(tmp_path / "proc")
    assert again.settings() == processor.settings()
    assert again.image_token_id == processor.image_token_id


def test_read_only_frames_convert_without_a_warning(processor):
    """Decoded frames are often read-only buffers (an Arrow column, a bytes object): the processor copies them
    into its float tensor instead of wrapping them, so torch's "NumPy array is not writable" warning cannot come."""
    import warnings

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(processor.image_size, processor.image_size, 3), dtype=np.uint8)
    read_only = np.frombuffer(frame.tobytes(), dtype=np.uint8).reshape(frame.shape)
    assert not read_only.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = processor._to_tensor(read_only, (processor.image_size, processor.image_size))
    # the same size: no resampling, so the result is the normalisation worked by hand
    mean = np.array(processor.image_mean, dtype=np.float32)[:, None, None]
    std = np.array(processor.image_std, dtype=np.float32)[:, None, None]
    expected = (frame.transpose(2, 0, 1).astype(np.float32) / 255.0 - mean) / std
    np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-6)


def test_media_grids_at_paper_settings_match_hand_worked_examples():
    """§3 settings (R_v 384, patch 14, 2x2 pooling, F = 16 at 2 fps, <= 64 chunks, <= 9 sub-images), by hand:
    - 384x384 image: 384 is 27.4 patches -> 27 (378 px), one 27x27 chunk, pooled 14x14 = 196 tokens;
    - 1024x768 image: N_s = floor(786432 / 384^2) = 5; of the (m, n) with m*n in {4, 5, 6}, 3x2 is nearest log(4/3);
      thumbnail (384*sqrt(4/3), 384*sqrt(3/4)) = (443.4, 332.6) -> 32x24 patches; sub-images 341.3x384 (fewer
      pixels than 384^2: kept, patch-rounded) -> 24x27 patches, six of them; tokens 16*12 + 6 * 12*14 = 1200;
    - 640x360 video of 20 s: 40 frames at 2 fps -> ceil(40/16) = 3 chunks of (512, 288) -> 37x21 patches,
      pooled 19x11 = 209 tokens each, 627 in all;
    - a 10-minute 1280x720 video: 1200 frames would be 75 chunks; frame dropping keeps 64 of 209 tokens."""
    from model.configuration import MavorsConfig
    from model.preprocessing import pooled_grid
    from model.processing import media_grids

    cfg = MavorsConfig()
    assert (cfg.image_size, cfg.patch_size, cfg.pooling_size, cfg.frames_per_chunk, cfg.video_fps) == (384, 14, 2, 16, 2.0)

    def tokens(grids):
        return sum(a * b for a, b in (pooled_grid(h, w, 2) for h, w in grids))

    g = media_grids("image", {"width": 384, "height": 384}, cfg)
    assert g == [(27, 27)] and tokens(g) == 196
    g = media_grids("image", {"width": 1024, "height": 768}, cfg)
    assert g == [(24, 32)] + [(27, 24)] * 6 and tokens(g) == 1200
    assert sum(h * w for h, w in g) == 24 * 32 + 6 * 27 * 24  # the vision encoder's patches, before pooling
    for meta in ({"width": 640, "height": 360, "duration_s": 20.0}, {"width": 640, "height": 360, "n_frames": 600,
                                                                      "fps": 30.0}):
        g = media_grids("video", meta, cfg)
        assert g == [(21, 37)] * 3 and tokens(g) == 627
    g = media_grids("video", {"width": 1280, "height": 720, "duration_s": 600.0}, cfg)
    assert g == [(21, 37)] * 64 and tokens(g) == 64 * 209
    with pytest.raises(ValueError, match="clip.mp4: video metadata without"):
        media_grids("video", {"width": 640, "height": 360}, cfg, "clip.mp4")
