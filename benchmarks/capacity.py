"""Capacity model: predict wall time and GPU-hours of the paper's pipeline from measured per-stage rates.

    python benchmarks/capacity.py                       # paper scale, default rates (documented below)
    python benchmarks/capacity.py --train-rate 1.2 --gpus 416 --caption-rate 0.8 --ppl-rate 40

Rates are per GPU (or per CPU core for sharding) and come from the other
benchmarks (captions.py, ppl.py, shards.py, train.py) run on the target
hardware. Training can also be estimated from first principles: samples/s per
GPU = MFU x peak FLOP/s / (6 x trainable-and-frozen-forward FLOPs per token x
tokens per sample), the standard 6N rule with the frozen parts' backward removed.
The table compares the prediction with the paper's measured 71 / 177 / 28 hours
on 416 GPUs (§5.1) and prints the per-GPU rate and MFU the paper's numbers imply
(at the assumed tokens per sample and peak FLOP/s).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

# Paper §5.1: samples, global batch, measured hours on 416 GPUs; trainable modules per stage.
PAPER_STAGES = {
    "stage1": dict(samples=127e6, hours=71, trainable=("ifa", "projector")),
    "stage1_5": dict(samples=52e6, hours=177, trainable=("ive", "ifa", "projector")),
    "stage2": dict(samples=19e6, hours=28, trainable=("ive", "ifa", "projector", "llm")),
}
PAPER_GPUS = 416
# Mavors-7B parameter counts (SigLIP-so400m ~0.4B with 3D patch embed, IFA 3 layers ~0.05B,
# projector ~0.03B, Qwen2.5-7B ~7.6B).
PARAMS = {"ive": 0.43e9, "ifa": 0.05e9, "projector": 0.03e9, "llm": 7.6e9}
# Appendix A / Table 6 curation volumes (samples needing synthetic captions, samples PPL-scored).
CURATION = {"caption_samples": 3.0e6, "ppl_samples": 200e6, "shard_bytes": 60e12}


@dataclass
class Rates:
    train_samples_per_gpu_s: float | None
    """Measured training samples/s per GPU (benchmarks/train.py on the target GPU); None: estimate from MFU."""
    mfu: float = 0.40
    """Model FLOPs utilisation for the FLOPs-based estimate (torchtitan: 33-39% on H100 for Llama-3 8B)."""
    peak_flops: float = 989e12
    """Dense bf16 peak per GPU (H100/H200 SXM: 989 TFLOP/s)."""
    tokens_per_sample: float = 2048
    """Average LLM sequence length per training sample (visual + text tokens)."""
    vision_tokens_per_sample: float = 6144
    """Average IVE/IFA tokens per sample: 4x the visual LLM tokens (2x2 pooling happens after the ViT)."""
    caption_samples_per_gpu_s: float = 0.5
    """Captions/s per GPU over the whole roster (3 VLMs + merger, 72B-class, vLLM)."""
    ppl_samples_per_gpu_s: float = 30.0
    """PPL-scored samples/s per GPU (72B scorer, prompt_logprobs, vLLM)."""
    shard_mb_per_core_s: float = 100.0
    """Shard writing MB/s per CPU core (benchmarks/shards.py)."""


def stage_flops_per_sample(trainable: tuple[str, ...], tokens: float, vision_tokens: float) -> float:
    """Forward 2N for every module; backward 4N only for trainable modules, 2N (activation grads)
    for frozen modules that sit *after* a trainable one (the LLM when only IFA/projector train still
    needs its activation gradients to reach them)."""
    order = ["ive", "ifa", "projector", "llm"]
    first_trainable = min(order.index(m) for m in trainable)
    flops = 0.0
    for i, m in enumerate(order):
        n = PARAMS[m]
        fwd = 2 * n
        if m in trainable:
            bwd = 4 * n
        elif i > first_trainable:
            bwd = 2 * n  # gradients w.r.t. activations only
        else:
            bwd = 0.0
        flops += (fwd + bwd) * (vision_tokens if m in ("ive", "ifa") else tokens)
    return flops


def train_rate(stage: str, rates: Rates) -> float:
    if rates.train_samples_per_gpu_s is not None:
        return rates.train_samples_per_gpu_s
    flops = stage_flops_per_sample(PAPER_STAGES[stage]["trainable"], rates.tokens_per_sample,
                                   rates.vision_tokens_per_sample)
    return rates.mfu * rates.peak_flops / flops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, default=PAPER_GPUS)
    p.add_argument("--cpu-cores", type=int, default=416 * 12)
    p.add_argument("--train-rate", type=float, default=None, help="measured training samples/s per GPU")
    p.add_argument("--mfu", type=float, default=0.40)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--tokens-per-sample", type=float, default=2048)
    p.add_argument("--vision-tokens-per-sample", type=float, default=6144)
    p.add_argument("--caption-rate", type=float, default=0.5)
    p.add_argument("--ppl-rate", type=float, default=30.0)
    p.add_argument("--shard-mb-rate", type=float, default=100.0)
    a = p.parse_args()
    rates = Rates(a.train_rate, a.mfu, a.peak_tflops * 1e12, a.tokens_per_sample,
                  a.vision_tokens_per_sample, a.caption_rate, a.ppl_rate, a.shard_mb_rate)

    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    t = Table(title=f"Training at paper scale on {a.gpus} GPUs")
    for col in ("stage", "samples", "rate/GPU (pred)", "hours (pred)", "GPU-hours (pred)",
                "hours (paper, 416 GPUs)", "rate/GPU implied by paper", "MFU implied by paper", "pred / paper"):
        t.add_column(col, justify="right")
    for stage, s in PAPER_STAGES.items():
        r = train_rate(stage, rates)
        hours = s["samples"] / (r * a.gpus) / 3600
        implied = s["samples"] / (s["hours"] * 3600 * PAPER_GPUS)
        paper_equiv = s["hours"] * PAPER_GPUS / a.gpus
        flops = stage_flops_per_sample(s["trainable"], rates.tokens_per_sample, rates.vision_tokens_per_sample)
        implied_mfu = implied * flops / rates.peak_flops
        t.add_row(stage, f"{s['samples']:.3g}", f"{r:.2f}", f"{hours:.1f}", f"{hours * a.gpus:.0f}",
                  f"{s['hours']}", f"{implied:.2f}", f"{implied_mfu:.1%}", f"{hours / paper_equiv:.2f}x")
    console.print(t)

    c = Table(title="Curation at paper scale")
    for col in ("step", "volume", "rate", "GPU-hours", f"hours on {a.gpus} GPUs / {a.cpu_cores} cores"):
        c.add_column(col, justify="right")
    cap_gpu_h = CURATION["caption_samples"] / rates.caption_samples_per_gpu_s / 3600
    ppl_gpu_h = CURATION["ppl_samples"] / rates.ppl_samples_per_gpu_s / 3600
    shard_h = CURATION["shard_bytes"] / 1e6 / (rates.shard_mb_per_core_s * a.cpu_cores) / 3600
    c.add_row("caption synthesis", f"{CURATION['caption_samples']:.3g} samples",
              f"{rates.caption_samples_per_gpu_s} /s/GPU", f"{cap_gpu_h:.0f}", f"{cap_gpu_h / a.gpus:.1f}")
    c.add_row("perplexity scoring", f"{CURATION['ppl_samples']:.3g} samples",
              f"{rates.ppl_samples_per_gpu_s} /s/GPU", f"{ppl_gpu_h:.0f}", f"{ppl_gpu_h / a.gpus:.1f}")
    c.add_row("sharding", f"{CURATION['shard_bytes'] / 1e12:.0f} TB", f"{rates.shard_mb_per_core_s} MB/s/core",
              "-", f"{shard_h:.1f}")
    console.print(c)


if __name__ == "__main__":
    main()
