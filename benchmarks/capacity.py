"""Capacity model: predict wall time and GPU-hours of the paper's pipeline from measured rates and the processor's plan.

    python benchmarks/capacity.py                       # paper scale, tokens planned over manifests/mixtures/paper-table6.yaml
    python benchmarks/capacity.py --mfu 0.40 --gpus 416 --image-rate 250 --video-rate 40

Tokens per sample are not a constant: every Table-6 entry of a stage gets a media profile
(``manifests/capacity/paper-media.yaml``: resolution, duration, media and text tokens of a typical sample) and
the processor's plan (:func:`model.processing.media_grids` at the paper settings) turns it into LLM tokens,
vision-encoder patches and chunk lengths; the stage's mean is weighted by Table 6's counts. Training FLOPs per
sample: forward 2N per token for every module, backward 4N for trainable modules and 2N (activation gradients)
for frozen ones after a trainable one, plus attention (4 x layers x width x length^2 forward per sequence, 3x
with backward; the LLM per sample, the IVE per chunk; the IFA's left out), samples/s per GPU = MFU x peak /
FLOPs. The table compares with the paper's 71 / 177 / 28 hours on 416 GPUs (§5.1), prints the MFU the paper's
hours imply at the planned tokens and at the old constant 2,048 tokens, and fits one MFU for all three stages.

Measured figures this model is fed (benchmarks of this repo; CPU, 2 cores):
- benchmarks/train.py batching table (cb7afb2): MFU 5.4 / 5.4 / 5.8% of a measured 100.6 GFLOP/s CPU peak
  (tiny Mavors, samples / tokens / packed);
- benchmarks/loader.py (febbabb): the paper processor delivers 4.1 samples/s on one core in-process;
- benchmarks/ingest.py: hash + probe per CPU-second, Ray Data with 2 workers, 5,000 files: 195 images,
  25.7 videos (351 / 35.3 in-process);
- benchmarks/dedup.py (shared/STACK.md): 10^7 rows in 16.8 s on 2 cores, idle.
Caption synthesis and PPL scoring run 72B engines on GPUs this repo has not measured: PPL is estimated from its
FLOPs (a forward of the 72B scorer over the sample's planned tokens at ``--prefill-mfu``), captions keep the
per-GPU rate given (an assumption).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict

ROOT = Path(__file__).resolve().parents[1]
MIXTURE = ROOT / "manifests/mixtures/paper-table6.yaml"
PROFILES = ROOT / "manifests/capacity/paper-media.yaml"

# Paper §5.1: samples, measured hours on 416 GPUs; mixture stage of Table 6; trainable modules per stage.
PAPER_STAGES = {
    "stage1": dict(samples=127e6, hours=71, mixture_stage="1", trainable=("ifa", "projector")),
    "stage1_5": dict(samples=52e6, hours=177, mixture_stage="1.5", trainable=("ive", "ifa", "projector")),
    "stage2": dict(samples=19e6, hours=28, mixture_stage="2", trainable=("ive", "ifa", "projector", "llm")),
}
PAPER_GPUS = 416
OLD_TOKENS, OLD_VISION_TOKENS = 2048, 6144  # the constants this model assumed before planning tokens
# Mavors-7B parameter counts (SigLIP-so400m ~0.4B with 3D patch embed, IFA 3 layers ~0.05B,
# projector ~0.03B, Qwen2.5-7B ~7.6B) and the attention shapes (layers, width).
PARAMS = {"ive": 0.43e9, "ifa": 0.05e9, "projector": 0.03e9, "llm": 7.6e9}
ATTN = {"ive": (27, 1152), "llm": (28, 3584)}
SCORER_PARAMS = 72e9  # Qwen2-VL-72B, the PPL scorer
# Appendix A / Table 6 curation volumes: samples needing synthetic captions, samples PPL-scored and ingested.
CURATION = {"caption_samples": 3.0e6, "ppl_samples": 200e6, "ingest_samples": 198e6, "shard_bytes": 60e12}


class MediaProfile(BaseModel):
    """A typical sample of one dataset: its media (kind, size, duration, how many) and its text tokens."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["image", "video", "text"]
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    media: int = 1
    text_tokens: int


class Profiles(BaseModel):
    model_config = ConfigDict(extra="forbid")
    categories: dict[str, MediaProfile]
    sources: dict[str, MediaProfile] = {}

    def of(self, stage: str, source: str, category: str | None) -> MediaProfile:
        for key, table in ((source, self.sources), (f"{category}@{stage}", self.categories),
                           (category, self.categories)):
            if key in table:
                return table[key]
        raise SystemExit(f"{PROFILES}: no profile for source {source!r} (category {category!r}, stage {stage})")


@dataclass
class SampleShape:
    """Mean work of a stage's sample: LLM tokens, IVE patches, pooled visual tokens (IFA/projector), and the
    attention terms (mean of length^2 of the LLM sequence and of every IVE chunk)."""

    tokens: float
    ive_patches: float
    visual_tokens: float
    llm_len2: float
    ive_len2: float
    video_share: float = 0.0
    text_share: float = 0.0


def profile_shape(p: MediaProfile, settings) -> SampleShape:
    """One profile through the processor's plan (:func:`model.processing.media_grids`)."""
    from model.preprocessing import pooled_grid
    from model.processing import media_grids

    grids = [] if p.kind == "text" else media_grids(p.kind, p.model_dump(), settings, "profile") * p.media
    visual = sum(a * b for a, b in (pooled_grid(h, w, settings.pooling_size) for h, w in grids))
    tokens = p.text_tokens + visual
    return SampleShape(tokens=tokens, ive_patches=sum(h * w for h, w in grids), visual_tokens=visual,
                       llm_len2=tokens ** 2, ive_len2=sum((h * w) ** 2 for h, w in grids),
                       video_share=float(p.kind == "video"), text_share=float(p.kind == "text"))


def stage_shape(stage: str, total: float, profiles: Profiles, settings) -> tuple[SampleShape, int]:
    """Count-weighted mean shape over a stage's Table-6 entries; ``count: all`` entries share the rest of
    ``total`` equally. Returns the shape and the number of entries."""
    from curation.mixtures import load_mixture

    entries = load_mixture(MIXTURE).stages[stage]
    counted = sum(e.count for e in entries if isinstance(e.count, int))
    open_ = [e for e in entries if not isinstance(e.count, int)]
    share = max(total - counted, 0) / len(open_) if open_ else 0.0
    weights = [e.count if isinstance(e.count, int) else share for e in entries]
    shapes = [profile_shape(profiles.of(stage, e.source, e.category), settings) for e in entries]
    w = sum(weights)
    mean = {f: sum(wi * getattr(s, f) for wi, s in zip(weights, shapes)) / w for f in SampleShape.__dataclass_fields__}
    return SampleShape(**mean), len(entries)


def constant_shape(tokens: float = OLD_TOKENS, vision: float = OLD_VISION_TOKENS) -> SampleShape:
    """The old assumption: every sample 2,048 LLM tokens and 6,144 IVE patches (attention left out)."""
    return SampleShape(tokens=tokens, ive_patches=vision, visual_tokens=vision, llm_len2=0.0, ive_len2=0.0)


def stage_flops_per_sample(trainable: tuple[str, ...], s: SampleShape) -> float:
    """Forward 2N per token for every module; backward 4N for trainable modules, 2N (activation gradients)
    for frozen modules after a trainable one (the LLM in Stage 1 passes gradients back to the IFA), none
    before. The IVE runs per patch, IFA and projector per pooled visual token, the LLM per token; attention
    4 x layers x width x length^2 forward, x3 where a backward runs."""
    order = ["ive", "ifa", "projector", "llm"]
    first_trainable = min(order.index(m) for m in trainable)
    per_module = {"ive": s.ive_patches, "ifa": s.visual_tokens, "projector": s.visual_tokens, "llm": s.tokens}
    len2 = {"ive": s.ive_len2, "llm": s.llm_len2}
    flops = 0.0
    for i, m in enumerate(order):
        backward = m in trainable or i > first_trainable
        flops += (2 + (4 if m in trainable else 2 if backward else 0)) * PARAMS[m] * per_module[m]
        if m in ATTN:
            layers, width = ATTN[m]
            flops += (3 if backward else 1) * 4 * layers * width * len2[m]
    return flops


@dataclass
class Rates:
    mfu: float = 0.40
    """MFU for training (torchtitan: 33-39% on H100 for Llama-3 8B); the table also fits it to the paper."""
    peak_flops: float = 989e12
    """Dense bf16 peak per GPU (H100/H200 SXM: 989 TFLOP/s)."""
    prefill_mfu: float = 0.40
    """MFU of the PPL scorer's forward (prefill only, compute-bound)."""
    caption_samples_per_gpu_s: float = 0.5
    """Captions/s per GPU over the whole roster (3 VLMs + merger, 72B-class, vLLM): an assumption."""
    image_probe_per_core_s: float = 195.0
    """Images hashed + probed per CPU-second on Ray Data, 2 workers, Ray's daemons and driver counted
    (benchmarks/ingest.py, 4,000 640x480 JPEGs; 351 in-process)."""
    video_probe_per_core_s: float = 25.7
    """Videos hashed + probed per CPU-second on Ray Data, 2 workers, all Ray processes counted
    (benchmarks/ingest.py, 1,000 4 s 640x360 mp4s; 35.3 in-process)."""
    dedup_rows_per_core_s: float = 10e6 / 16.8 / 2
    """Dedup rows per core per second (benchmarks/dedup.py: 10^7 rows in 16.8 s on 2 cores)."""
    shard_mb_per_core_s: float = 100.0
    """Shard writing MB/s per CPU core (benchmarks/shards.py)."""
    loader_samples_per_core_s: float = 4.1
    """Samples/s one core's loader makes with the paper processor (benchmarks/loader.py)."""


def train_rate(flops_per_sample: float, mfu: float, peak: float) -> float:
    return mfu * peak / flops_per_sample


def implied_mfu(stage: dict, flops_per_sample: float, peak: float) -> float:
    """MFU the paper's hours imply: its samples/s per GPU x FLOPs per sample / peak."""
    return stage["samples"] / (stage["hours"] * 3600 * PAPER_GPUS) * flops_per_sample / peak


def paper_shapes(profiles_path: Path = PROFILES) -> dict[str, tuple[SampleShape, int]]:
    from model.configuration import MavorsConfig

    profiles = Profiles.model_validate(yaml.safe_load(profiles_path.read_text()))
    settings = MavorsConfig()  # the paper stages override none of the processor settings
    return {k: stage_shape(s["mixture_stage"], s["samples"], profiles, settings) for k, s in PAPER_STAGES.items()}


def main() -> None:
    d = Rates()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, default=PAPER_GPUS)
    p.add_argument("--cpu-cores", type=int, default=416 * 12)
    p.add_argument("--mfu", type=float, default=d.mfu, help="training MFU for the 'at --mfu' columns")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--prefill-mfu", type=float, default=d.prefill_mfu)
    p.add_argument("--caption-rate", type=float, default=d.caption_samples_per_gpu_s)
    p.add_argument("--image-rate", type=float, default=d.image_probe_per_core_s, help="images/s/core probed")
    p.add_argument("--video-rate", type=float, default=d.video_probe_per_core_s, help="videos/s/core probed")
    p.add_argument("--shard-mb-rate", type=float, default=d.shard_mb_per_core_s)
    p.add_argument("--node-gpus", type=int, default=8)
    p.add_argument("--node-cores", type=int, default=96)
    a = p.parse_args()
    rates = Rates(a.mfu, a.peak_tflops * 1e12, a.prefill_mfu, a.caption_rate, a.image_rate, a.video_rate,
                  shard_mb_per_core_s=a.shard_mb_rate)
    peak = rates.peak_flops

    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    shapes = paper_shapes()
    t = Table(title="Tokens per sample, planned over paper-table6.yaml (processor at paper settings) vs the old constant")
    for col in ("stage", "entries", "video share", "text-only", "LLM tokens", "visual tokens", "IVE patches",
                "GFLOP/sample (planned)", "GFLOP/sample (2,048 const)"):
        t.add_column(col, justify="right")
    flops = {}
    for stage, s in PAPER_STAGES.items():
        shape, n = shapes[stage]
        flops[stage] = (stage_flops_per_sample(s["trainable"], shape),
                        stage_flops_per_sample(s["trainable"], constant_shape()))
        t.add_row(stage, str(n), f"{shape.video_share:.0%}", f"{shape.text_share:.0%}", f"{shape.tokens:.0f}",
                  f"{shape.visual_tokens:.0f}", f"{shape.ive_patches:.0f}", f"{flops[stage][0] / 1e9:.0f}",
                  f"{flops[stage][1] / 1e9:.0f}")
    console.print(t)

    implied = {k: implied_mfu(s, flops[k][0], peak) for k, s in PAPER_STAGES.items()}
    fitted = math.exp(sum(math.log(m) for m in implied.values()) / len(implied))  # one MFU, geometric mean
    t = Table(title=f"Training at paper scale on {a.gpus} GPUs ({a.peak_tflops:.0f} TFLOP/s peak)")
    for col in ("stage", "samples", "hours (paper, 416 GPUs)", "MFU implied (planned tokens)",
                "MFU implied (2,048 const)", f"hours at MFU {a.mfu:.0%}", f"pred/paper at {a.mfu:.0%}",
                f"hours at fitted {fitted:.1%}", "pred/paper (fitted)", "within 2x"):
        t.add_column(col, justify="right")
    for stage, s in PAPER_STAGES.items():
        paper_equiv = s["hours"] * PAPER_GPUS / a.gpus
        h_mfu = s["samples"] / (train_rate(flops[stage][0], a.mfu, peak) * a.gpus) / 3600
        h_fit = s["samples"] / (train_rate(flops[stage][0], fitted, peak) * a.gpus) / 3600
        ratio = h_fit / paper_equiv
        t.add_row(stage, f"{s['samples']:.3g}", f"{s['hours']}", f"{implied[stage]:.1%}",
                  f"{implied_mfu(s, flops[stage][1], peak):.1%}", f"{h_mfu:.1f}", f"{h_mfu / paper_equiv:.2f}x",
                  f"{h_fit:.0f}", f"{ratio:.2f}x", "yes" if 0.5 <= ratio <= 2 else "NO")
    console.print(t)
    longer = [k for k in PAPER_STAGES if shapes[k][0].tokens > OLD_TOKENS]
    lengths = ", ".join(f"{k} {shapes[k][0].tokens:.0f}" for k in PAPER_STAGES)
    need = max(s["samples"] / (s["hours"] * 3600 * PAPER_GPUS) for s in PAPER_STAGES.values())
    console.print(
        "Which assumption explains the gap: planned samples are "
        + (f"longer than the constant 2,048 tokens in {', '.join(longer)} ({lengths} tokens), so sample length "
           "accounts for part of it; " if longer else
           f"shorter than the constant 2,048 tokens in every stage ({lengths} tokens), so sample length cannot "
           "explain it; ")
        + f"the paper's hours imply an MFU of {min(implied.values()):.1%}-{max(implied.values()):.1%} "
          f"(one MFU for all stages: {fitted:.1%}), against the {a.mfu:.0%} assumed. The loader is not the limit: "
          f"the paper's rate needs {need / rates.loader_samples_per_core_s:.2f} cores per GPU at "
          f"{rates.loader_samples_per_core_s} samples/s/core (benchmarks/loader.py).")

    mean_tokens = sum(shapes[k][0].tokens * s["samples"] for k, s in PAPER_STAGES.items()) / sum(
        s["samples"] for s in PAPER_STAGES.values())
    video_share = sum(shapes[k][0].video_share * s["samples"] for k, s in PAPER_STAGES.items()) / sum(
        s["samples"] for s in PAPER_STAGES.values())
    ppl_rate = rates.prefill_mfu * peak / (2 * SCORER_PARAMS * mean_tokens)
    probe_rate = 1 / ((1 - video_share) / rates.image_probe_per_core_s + video_share / rates.video_probe_per_core_s)
    c = Table(title="Curation at paper scale")
    for col in ("step", "volume", "rate", "GPU-hours / core-hours", f"hours on {a.gpus} GPUs / {a.cpu_cores} cores"):
        c.add_column(col, justify="right")
    cap_gpu_h = CURATION["caption_samples"] / rates.caption_samples_per_gpu_s / 3600
    ppl_gpu_h = CURATION["ppl_samples"] / ppl_rate / 3600
    probe_core_h = CURATION["ingest_samples"] / probe_rate / 3600
    dedup_core_h = CURATION["ingest_samples"] / rates.dedup_rows_per_core_s / 3600
    shard_core_h = CURATION["shard_bytes"] / 1e6 / rates.shard_mb_per_core_s / 3600
    c.add_row("hash + probe (ingest)", f"{CURATION['ingest_samples']:.3g} media ({video_share:.0%} video)",
              f"{probe_rate:.0f} /s/core", f"{probe_core_h:.0f} core-h", f"{probe_core_h / a.cpu_cores:.2f}")
    c.add_row("dedup", f"{CURATION['ingest_samples']:.3g} rows", f"{rates.dedup_rows_per_core_s:.3g} rows/s/core",
              f"{dedup_core_h:.1f} core-h", f"{dedup_core_h / 2:.2f} (one 2-core DuckDB)")
    c.add_row("caption synthesis", f"{CURATION['caption_samples']:.3g} samples",
              f"{rates.caption_samples_per_gpu_s} /s/GPU (assumed)", f"{cap_gpu_h:.0f}", f"{cap_gpu_h / a.gpus:.1f}")
    c.add_row("perplexity scoring", f"{CURATION['ppl_samples']:.3g} samples x {mean_tokens:.0f} tokens",
              f"{ppl_rate:.1f} /s/GPU (FLOPs at {rates.prefill_mfu:.0%})", f"{ppl_gpu_h:.0f}", f"{ppl_gpu_h / a.gpus:.1f}")
    c.add_row("sharding", f"{CURATION['shard_bytes'] / 1e12:.0f} TB", f"{rates.shard_mb_per_core_s} MB/s/core",
              f"{shard_core_h:.0f} core-h", f"{shard_core_h / a.cpu_cores:.1f}")
    console.print(c)

    n = Table(title=f"One node per hour: {a.node_gpus} GPUs at {a.peak_tflops:.0f} TFLOP/s (H100/H200 SXM), "
                    f"{a.node_cores} cores")
    for col in ("step", "per node-hour", "basis"):
        n.add_column(col)
    n.add_row("hash + probe (ingest)", f"{probe_rate * a.node_cores * 3600:.3g} media",
              f"{probe_rate:.0f} /s/core x {a.node_cores} cores")
    n.add_row("dedup", f"{rates.dedup_rows_per_core_s * 2 * 3600:.3g} rows",
              "one DuckDB on 2 threads, as measured (10^7 rows in 16.8 s); more threads unmeasured")
    n.add_row("caption synthesis", f"{rates.caption_samples_per_gpu_s * a.node_gpus * 3600:.3g} samples",
              f"{rates.caption_samples_per_gpu_s} /s/GPU (assumed)")
    n.add_row("perplexity scoring", f"{ppl_rate * a.node_gpus * 3600:.3g} samples",
              f"72B forward over {mean_tokens:.0f} tokens at {rates.prefill_mfu:.0%} MFU")
    n.add_row("sharding", f"{rates.shard_mb_per_core_s * a.node_cores * 3600 / 1e6:.2f} TB",
              f"{rates.shard_mb_per_core_s} MB/s/core")
    for stage, s in PAPER_STAGES.items():
        paper_rate = s["samples"] / (s["hours"] * 3600 * PAPER_GPUS)
        n.add_row(f"train {stage}", f"{paper_rate * a.node_gpus * 3600:.3g} samples (paper); "
                                    f"{train_rate(flops[stage][0], a.mfu, peak) * a.node_gpus * 3600:.3g} at {a.mfu:.0%} MFU",
                  f"{shapes[stage][0].tokens:.0f} tokens/sample; paper's MFU {implied[stage]:.1%}")
    console.print(n)


if __name__ == "__main__":
    main()
