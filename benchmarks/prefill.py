"""Video prefill: Mavors vs a transformers Qwen2-VL of equal LLM and vision width (paper App. B, Table 7).

Both models get the same 64-frame video (a moving square, taken as already at the fixed fps) and the
same prompt, random weights, SDPA attention. Mavors: F=16 frames per chunk -> 4 chunks of
(R_v/14)^2 patches, 2x2 pooled, IFA, projector. Qwen2-VL: temporal patch 2, 2x2 merge, frames at
Mavors' resolution rounded to 28. Prefill = one forward over the whole prompt (vision included),
logits for the last position only. Prints visual tokens, vision time, prefill time and the ratio.

    python benchmarks/prefill.py                       # CPU, small widths (~1-2 min on 2 cores)
    python benchmarks/prefill.py --device cuda --shape 7b --dtype bfloat16   # SigLIP-so400m + Qwen2.5-7B shapes
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

SHAPES = {
    # vision: SigLIP-like width/depth/heads; llm: Qwen2 width/layers/heads/kv/mlp; r_v: resolution
    "small": dict(vision=dict(hidden=128, layers=4, heads=2, mlp=512), r_v=224,
                  llm=dict(hidden=256, layers=4, heads=4, kv=2, mlp=768, vocab=None)),
    "7b": dict(vision=dict(hidden=1152, layers=27, heads=16, mlp=4608), r_v=384,
               llm=dict(hidden=3584, layers=28, heads=28, kv=4, mlp=18944, vocab=152064)),
}


def moving_square_video(n_frames: int, size: int) -> np.ndarray:
    """uint8 (T, H, W, 3): a red square crossing a gray background."""
    video = np.full((n_frames, size, size, 3), 96, np.uint8)
    side = size // 6
    for t in range(n_frames):
        x = int((size - side) * t / max(1, n_frames - 1))
        video[t, size // 3: size // 3 + side, x: x + side] = (220, 30, 30)
    return video


def special_ids(tokenizer) -> dict:
    """bos/eos/pad of the LLM from the shared tokenizer (Qwen's <|endoftext|> / <|im_end|>)."""
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return dict(bos_token_id=end, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=end)


def build_mavors(shape: dict, tokenizer, vocab: int):
    from model import MavorsConfig, MavorsForConditionalGeneration, MavorsProcessor
    from model.conversion import placeholder_ids

    v, l = shape["vision"], shape["llm"]
    config = MavorsConfig(
        vision_config=dict(hidden_size=v["hidden"], intermediate_size=v["mlp"], num_hidden_layers=v["layers"],
                           num_attention_heads=v["heads"], image_size=shape["r_v"], patch_size=14),
        text_config=dict(vocab_size=vocab, hidden_size=l["hidden"], intermediate_size=l["mlp"],
                         num_hidden_layers=l["layers"], num_attention_heads=l["heads"], num_key_value_heads=l["kv"],
                         **special_ids(tokenizer)),
        frames_per_chunk=16, ifa_num_layers=3, ifa_num_heads=v["heads"], **placeholder_ids(tokenizer))
    return MavorsForConditionalGeneration(config), MavorsProcessor.from_config(config, tokenizer)


def build_qwen2vl(shape: dict, tokenizer, vocab: int):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from model.conversion import placeholder_ids

    v, l = shape["vision"], shape["llm"]
    ids = placeholder_ids(tokenizer)
    head_dim = l["hidden"] // l["heads"]
    section = [head_dim // 8, head_dim // 8 * 3 // 2, head_dim // 8 * 3 // 2]  # 16/24/24 at head 128
    section[0] += head_dim // 2 - sum(section)
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=vocab, hidden_size=l["hidden"], intermediate_size=l["mlp"],
                         num_hidden_layers=l["layers"], num_attention_heads=l["heads"], num_key_value_heads=l["kv"],
                         rope_scaling={"type": "mrope", "mrope_section": section}, **special_ids(tokenizer)),
        vision_config=dict(depth=v["layers"], embed_dim=v["hidden"], hidden_size=l["hidden"], num_heads=v["heads"],
                           mlp_ratio=v["mlp"] // v["hidden"], patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, in_channels=3),
        image_token_id=ids["image_token_id"], video_token_id=ids["video_token_id"],
        vision_start_token_id=ids["vision_start_token_id"], vision_end_token_id=ids["vision_end_token_id"])
    return Qwen2VLForConditionalGeneration(config)


def qwen2vl_inputs(video: np.ndarray, side: int, tokenizer, prompt_ids: tuple[list[int], list[int]]) -> dict:
    """Qwen2-VL video layout: (t, h/2, w/2, 2, 2) patch order, C x 2 frames x 14 x 14 per patch."""
    frames = torch.from_numpy(video).permute(0, 3, 1, 2).float()
    frames = torch.nn.functional.interpolate(frames, size=(side, side), mode="bicubic", antialias=True)
    frames = (frames.clamp(0, 255) / 255 - 0.5) / 0.5  # (T, C, side, side)
    t, c, p, m, tp = frames.shape[0] // 2, 3, 14, 2, 2
    g = side // p
    x = frames.reshape(t, tp, c, g // m, m, p, g // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    pixel_values = x.reshape(t * g * g, c * tp * p * p)
    n_tokens = t * g * g // (m * m)
    video_id = tokenizer.convert_tokens_to_ids("<|video_pad|>")
    ids = (prompt_ids[0] + [tokenizer.convert_tokens_to_ids("<|vision_start|>")] + [video_id] * n_tokens
           + [tokenizer.convert_tokens_to_ids("<|vision_end|>")] + prompt_ids[1])
    input_ids = torch.tensor([ids])
    return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values_videos=pixel_values,
                video_grid_thw=torch.tensor([[t, g, g]]), mm_token_type_ids=(input_ids == video_id).long() * 2)


def timed(fn, repeats: int, device: str) -> float:
    """Median wall time (s) of fn() after one warm-up call."""
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from demo.tiny_models import make_tokenizer

    torch.manual_seed(0)
    shape = SHAPES[args.shape]
    dtype = getattr(torch, args.dtype)
    tokenizer = make_tokenizer()
    vocab = shape["llm"]["vocab"] or len(tokenizer)
    video = moving_square_video(args.frames, 2 * shape["r_v"])

    mavors, processor = build_mavors(shape, tokenizer, vocab)
    mavors = mavors.to(args.device, dtype).eval()
    sample = processor.encode([{"from": "human", "value": "<video>Describe the video."}], [video],
                              add_generation_prompt=True)
    batch = {k: v.to(args.device) for k, v in processor.collate([sample]).items() if k != "labels"}
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    mavors_visual = int((sample["input_ids"] == processor.video_token_id).sum())
    mavors_side = int(batch["chunk_grids"][0, 0]) * 14  # square video: dynamic resolution gives R_v, patch-rounded
    side = max(28, round(mavors_side / 28) * 28)  # Qwen2-VL needs multiples of patch * merge = 28

    ids = sample["input_ids"].tolist()
    start = ids.index(processor.vision_start_id)
    end = ids.index(processor.vision_end_id)
    qwen = build_qwen2vl(shape, tokenizer, vocab).to(args.device, dtype).eval()
    q_inputs = {k: v.to(args.device) for k, v in qwen2vl_inputs(video, side, tokenizer, (ids[:start], ids[end + 1:])).items()}
    q_inputs["pixel_values_videos"] = q_inputs["pixel_values_videos"].to(dtype)
    qwen_visual = int((q_inputs["mm_token_type_ids"] == 2).sum())

    with torch.inference_mode():
        rows = {
            "Mavors": dict(
                visual=mavors_visual, prompt=batch["input_ids"].shape[1], res=mavors_side,
                vision=timed(lambda: mavors.encode_visual(batch["pixel_values"], batch["chunk_grids"],
                                                          batch["chunk_positions"], batch["chunk_sequences"]),
                             args.repeats, args.device),
                prefill=timed(lambda: mavors(**batch, logits_to_keep=1), args.repeats, args.device)),
            "Qwen2-VL": dict(
                visual=qwen_visual, prompt=q_inputs["input_ids"].shape[1], res=side,
                vision=timed(lambda: qwen.get_video_features(q_inputs["pixel_values_videos"], q_inputs["video_grid_thw"]),
                             args.repeats, args.device),
                prefill=timed(lambda: qwen(**q_inputs, logits_to_keep=1), args.repeats, args.device)),
        }
    print(f"shape={args.shape} device={args.device} dtype={args.dtype} frames={args.frames} "
          f"vision width={shape['vision']['hidden']} llm width={shape['llm']['hidden']} repeats={args.repeats}")
    print(f"{'model':<10} {'res':>5} {'visual tok':>10} {'prompt':>7} {'vision s':>9} {'prefill s':>10}")
    for name, r in rows.items():
        print(f"{name:<10} {r['res']:>5} {r['visual']:>10} {r['prompt']:>7} {r['vision']:>9.3f} {r['prefill']:>10.3f}")
    m, q = rows["Mavors"], rows["Qwen2-VL"]
    print(f"ratio Qwen2-VL/Mavors: visual tokens {q['visual'] / m['visual']:.2f}x, "
          f"vision {q['vision'] / m['vision']:.2f}x, prefill {q['prefill'] / m['prefill']:.2f}x (paper, 7B on GPU: 2.7x)")


if __name__ == "__main__":
    main()
