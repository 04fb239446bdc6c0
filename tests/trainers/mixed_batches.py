"""Micro-batches of every modality for the two-rank tests, made by the tiny Mavors processor from generated media.

    plan = rank_plan(processor, dpo=False)   # plan[rank][step] -> [micro-batch, micro-batch]
    plan = packed_plan(processor, PACKED_MAX_TOKENS)   # the same steps' samples as packed rows (as many as needed)

The arrangement (2 ranks x 2 steps x 2 accumulation steps, micro batch 2): at step 1 rank 0 holds two
short text-only samples and then a micro-batch whose every sample the processor refused, while rank 1 holds
a video, an image, two images in one sample and an image large enough for sub-images (~18x the
answer tokens of rank 0); at step 2 rank 1 starts text-only while rank 0 has text and then two images.
"""
from __future__ import annotations

import numpy as np
import torch

LONG = ("the red circle moves left then the small blue square moves up and the camera shows a bright scene "
        "with one large green object ") * 3


def _image(seed: int, width: int = 64, height: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)  # (H, W, 3)


def _video(seed: int, frames: int = 12, width: int = 64, height: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)  # (T, H, W, 3)


# sample id -> (prompt with placeholders, chosen answer, rejected answer, media)
SAMPLES = {
    "text-short": ("What is two plus two?", "four", "five", []),
    "text-mid": ("Name a colour.", "red and then blue", "green", []),
    "text-long": ("Tell a story.", LONG, "no", []),
    "image": ("<image>\nDescribe the image.", LONG[:120], "dark", [_image(1)]),
    "big-image": ("<image>\nWhat is in the picture?", LONG[:60], "a circle", [_image(2, 128, 96)]),
    "two-images": ("<image>\n<image>\nCompare the two images.", LONG[:200], "same", [_image(3), _image(4, 48, 64)]),
    "video": ("<video>\nWhat moves in the video?", LONG, "nothing moves", [_video(5)]),
}
REFUSED = {"sample_id": "refused", "reason": "image_too_small"}

# rank -> step -> micro-batches (sample ids; [] is a micro-batch whose every sample was refused)
ARRANGEMENT = {
    0: [[["text-short", "text-mid"], []], [["text-long"], ["two-images", "text-short"]]],
    1: [[["video", "image"], ["two-images", "big-image"]], [["text-long", "text-mid"], ["video"]]],
}


def conversation(sample_id: str, side: str = "chosen") -> list[dict]:
    prompt, chosen, rejected, _ = SAMPLES[sample_id]
    return [{"from": "human", "value": prompt}, {"from": "gpt", "value": chosen if side == "chosen" else rejected}]


def reference_logps(sample_id: str) -> tuple[float, float]:
    """Made-up stored reference log-probs of a pair (chosen, rejected)."""
    i = list(SAMPLES).index(sample_id)
    return -20.0 - 3.0 * i, -25.0 + 2.0 * i


def micro_batch(processor, ids: list[str], dpo: bool) -> dict:
    """What the shard loader yields for these samples (an empty ``ids``: one refused sample, no tensors)."""
    if not ids:
        return {"sample_id": [], "skipped": [REFUSED]}
    batch: dict = {"sample_id": list(ids), "skipped": []}
    if not dpo:
        return {**batch, **processor.collate([processor.encode(conversation(s), SAMPLES[s][3], name=s) for s in ids])}
    for side in ("chosen", "rejected"):
        batch[side] = processor.collate([processor.encode(conversation(s, side), SAMPLES[s][3], name=s) for s in ids])
    refs = torch.tensor([reference_logps(s) for s in ids])  # (B, 2)
    return {**batch, "ref_chosen_logps": refs[:, 0], "ref_rejected_logps": refs[:, 1]}


def rank_plan(processor, dpo: bool) -> dict[int, list[list[dict]]]:
    return {rank: [[micro_batch(processor, ids, dpo) for ids in step] for step in steps]
            for rank, steps in ARRANGEMENT.items()}


PACKED_MAX_TOKENS = 150
"""Budget of the packed case: rank 1's step-1 media need 3 rows, rank 0's two text samples 1."""


def packed_plan(processor, max_tokens: int) -> dict[int, list[list[dict]]]:
    """Each rank's steps of ``ARRANGEMENT`` re-formed into packed rows, as ``trainers.packing.BudgetStream`` does."""
    from trainers.packing import BudgetStream

    def unit(ids: list[str]) -> dict:
        if not ids:
            return {"sample_id": [], "skipped": [REFUSED]}
        return {"sample_id": list(ids), "skipped": [],
                "samples": [processor.encode(conversation(s), SAMPLES[s][3], name=s) for s in ids]}

    packer = BudgetStream(iter([]), 2, "packed", max_tokens, processor.collate)
    return {rank: [packer.step_batches([unit(ids) for ids in step]) for step in steps]
            for rank, steps in ARRANGEMENT.items()}
