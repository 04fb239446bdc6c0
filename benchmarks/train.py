"""Training throughput: samples/s and tokens/s of a stage step through our DeepSpeed ZeRO-2 stack,
against a plain PyTorch AdamW loop on the same model and batches, measured in the same run; then the three
batching modes (``batch.mode`` samples / tokens / packed) on the demo Stage-2 shards.

    python benchmarks/train.py                      # CPU: tiny Mavors, image conversations, Stage-2 rules
    python benchmarks/train.py --device cuda --layers 4 --seq-len 4096 --peak-tflops 989
        # GPU: a 7B-shaped LLM slice (Qwen2.5-7B widths, N layers, random bf16 weights) -> MFU

MFU of the synthetic GPU run = (estimated FLOPs per token x tokens/s) / peak FLOPs, with the per-token estimate
of ``trainers.metrics.flops_per_token`` (6N for trained weights + attention, torchtitan's formula).

Batching table (tiny Mavors, the demo Stage-2 mixture built in a temporary folder by :mod:`demo.shards`, Stage-2
rules, global batch 8 of micro units of 2, ``--max-tokens`` for the token budget and the packed rows; the same
samples per step in every mode): tokens/s (real tokens, padding not counted), padded fraction of the LLM positions
computed, vision (IVE + IFA + projector) and LLM time split into forward and backward (backward split where the
gradient reaches the visual tokens), and MFU = model FLOPs / s / the peak fp32 (CPU) or bf16 (GPU) matmul
FLOP/s measured in the same run (best of square matmuls). Model FLOPs come from the shapes, per batch, the same
useful work in every mode (:func:`batch_flops`): 6 x parameters x tokens for every trained matmul (LLM incl. the
tied LM head per LLM token, IVE per patch, IFA and projector per visual token) plus attention
12 x layers x width x length^2 per sample in the LLM and per chunk in the IVE (torchtitan's count, causality not
halved; the IFA's attention is left out).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from trainers.losses import ntp_loss  # noqa: E402
from trainers.metrics import flops_per_token  # noqa: E402
from trainers.module import TrainModule, count_tokens, model_inputs  # noqa: E402
from trainers.spec import StageSpec  # noqa: E402
from trainers.stage import init_distributed  # noqa: E402
from trainers.synthetic import SyntheticStream  # noqa: E402


def stage2_spec(global_size: int, micro: int, steps: int, synthetic: dict) -> StageSpec:
    """Paper Stage-2 module rules (everything trains, IVE/IFA at 1/10, cosine to 1/10)."""
    return StageSpec.model_validate({
        "name": "bench", "init": {"pretrained": "unused"}, "data": {"synthetic": synthetic},
        "modules": {"ive": {"trainable": True, "lr_scale": 0.1}, "ifa": {"trainable": True, "lr_scale": 0.1},
                    "projector": {"trainable": True}, "llm": {"trainable": True}},
        "optim": {"lr": 1e-5}, "schedule": {"kind": "cosine", "min_ratio": 0.1},
        "batch": {"global_size": global_size, "micro_size": micro}, "budget": {"steps": steps}})


def cpu_model():
    from demo.tiny_models import make_tiny

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    paths = make_tiny(tmp)
    from model import MavorsForConditionalGeneration, MavorsProcessor

    return MavorsForConditionalGeneration.from_pretrained(paths["mavors"]), MavorsProcessor.from_pretrained(paths["mavors"])


def slice_7b_model(layers: int):
    """Mavors with a Qwen2.5-7B-shaped LLM cut to ``layers`` layers and a small vision side, random weights."""
    from transformers import Qwen2Config, SiglipVisionConfig

    from model import MavorsConfig, MavorsForConditionalGeneration

    text = Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=layers,
                       num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                       tie_word_embeddings=False)
    vision = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=1,
                                num_attention_heads=16, image_size=384, patch_size=14)
    return MavorsForConditionalGeneration(MavorsConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                                                       ifa_num_layers=1)), None


def batches(spec, model, processor, n):
    stream = SyntheticStream(spec.data.synthetic, model.config.text_config.vocab_size, spec.batch.micro_size, 0, 1,
                             seed=0, processor=processor if spec.data.synthetic.image_px else None)
    it = iter(stream)
    return [next(it) for _ in range(n)]


def time_ours(model, spec, data, warmup, device, world=1):
    module = TrainModule(model, spec, world, device)
    accum = module.engine.gradient_accumulation_steps()
    it = iter(data * (warmup + 100))
    for _ in range(warmup):
        module.train_step(it)
    sync(device)
    t0, samples, tokens = time.perf_counter(), 0, 0
    steps = len(data) // accum
    for _ in range(steps):
        stats = module.train_step(it)
        samples, tokens = samples + stats["samples"], tokens + stats["tokens"]
    sync(device)
    return samples, tokens, time.perf_counter() - t0, module


def time_plain(model, data, warmup, device, dtype):
    """Baseline: torch AdamW over all parameters, same batches, no DeepSpeed."""
    model = model.to(device=device, dtype=dtype).train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(batch):
        out = model(**model_inputs(batch, torch.device(device)))
        loss, _ = ntp_loss(out.logits, batch["labels"].to(device))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for batch in data[:warmup]:
        step(batch)
    sync(device)
    t0, samples, tokens = time.perf_counter(), 0, 0
    for batch in data:
        step(batch)
        samples, tokens = samples + len(batch["sample_id"]), tokens + count_tokens(batch)
    sync(device)
    return samples, tokens, time.perf_counter() - t0


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()

# ---- batching modes on the demo Stage-2 shards -------------------------------------------------------
def measured_peak_flops(device: str, n: int = 2048, repeat: int = 5) -> float:
    """Best matmul FLOP/s of this machine now: n x n x n, fp32 on CPU, bf16 on GPU."""
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def batch_flops(model, batch: dict) -> float:
    """Model FLOPs (forward + backward, everything trained) of one micro-batch, from the shapes (module doc)."""
    if not batch["sample_id"]:
        return 0.0
    cfg, vc = model.config.text_config, model.config.vision_config
    params = {m: sum(p.numel() for n, p in getattr(model, m).named_parameters() if "embed" not in n)
              for m in ("ive", "ifa", "projector", "llm")}
    if "sample_lengths" in batch:
        lengths = torch.tensor(batch["sample_lengths"])
    else:
        lengths = batch["attention_mask"].sum(1)
    tokens = int(lengths.sum())
    flops = 6 * (params["llm"] + cfg.vocab_size * cfg.hidden_size * cfg.tie_word_embeddings) * tokens
    flops += 12 * cfg.num_hidden_layers * cfg.hidden_size * float((lengths.double() ** 2).sum())
    if "pixel_values" in batch:
        visual = int(torch.isin(batch["input_ids"], torch.tensor([model.config.image_token_id,
                                                                  model.config.video_token_id])).sum())
        chunk_patches = batch["chunk_grids"].prod(1).double()  # (N,)
        flops += 6 * params["ive"] * float(chunk_patches.sum())  # patches (pixel_values rows may be frame rows)
        flops += 12 * vc.num_hidden_layers * vc.hidden_size * float((chunk_patches ** 2).sum())
        flops += 6 * (params["ifa"] + params["projector"]) * visual
    return float(flops)


class PartTimes:
    """Wall time of the vision path (IVE, IFA, projector) and the LLM, forward and backward, in one engine.

    Forward: module hooks. Backward: ``engine.backward`` timed whole and split at the moment the gradient reaches
    the projector's output (before it: the LLM's backward; after it: the vision path's)."""

    def __init__(self, module, device: str):
        self.device, self.times = device, dict.fromkeys(("vision_fwd", "llm_fwd", "vision_bwd", "llm_bwd"), 0.0)
        model, self._start, self._reached = module.model, {}, None
        vision_in = model.ive if hasattr(model, "ive") else None
        for name, first, last in (("vision_fwd", vision_in, model.projector), ("llm_fwd", model.llm, model.llm)):
            first.register_forward_pre_hook(lambda *_, n=name: self._begin(n))
            last.register_forward_hook(lambda _m, _i, out, n=name: self._end(n, out))
        engine, backward = module.engine, module.engine.backward

        def timed_backward(*args, **kwargs):
            sync(device)
            t0, self._reached = time.perf_counter(), None
            out = backward(*args, **kwargs)
            sync(device)
            t1 = time.perf_counter()
            split = self._reached or t1
            self.times["llm_bwd"] += split - t0
            self.times["vision_bwd"] += t1 - split
            return out

        engine.backward = timed_backward

    def _begin(self, name: str) -> None:
        sync(self.device)
        self._start[name] = time.perf_counter()

    def _end(self, name: str, out) -> None:
        sync(self.device)
        self.times[name] += time.perf_counter() - self._start.pop(name)
        if name == "vision_fwd" and torch.is_tensor(out) and out.requires_grad:
            out.register_hook(self._mark)

    def _mark(self, grad):
        sync(self.device)
        self._reached = time.perf_counter()

    def reset(self) -> None:
        self.times = dict.fromkeys(self.times, 0.0)


def demo_stage2(tmp: Path):
    """Tiny Mavors and the demo Stage-2 shards (the shipped mixture over the demo corpus), built under ``tmp``."""
    from core.paths import MANIFESTS
    from curation.mixtures import load_mixture
    from demo.corpus import generate
    from demo.shards import stage_shards
    from demo.tiny_models import make_tiny
    from model import MavorsForConditionalGeneration, MavorsProcessor

    paths = make_tiny(tmp / "models")
    shards = stage_shards(generate(tmp / "demo"), load_mixture(MANIFESTS / "mixtures" / "demo-stage2.yaml"), "2",
                          tmp / "data")
    return (MavorsForConditionalGeneration.from_pretrained(paths["mavors"]),
            MavorsProcessor.from_pretrained(paths["mavors"]), shards)


def run_mode(base_model, processor, shards: Path, mode: str, args, peak: float) -> dict:
    import copy

    from trainers.batches import build_stream
    from trainers.module import step_batches

    budget = {"mode": mode, "max_tokens": args.max_tokens} if mode != "samples" else {}
    spec = StageSpec.model_validate({
        **stage2_spec(args.global_batch, 2, args.warmup + args.batch_steps, {}).model_dump(exclude={"data", "batch"}),
        "data": {"shards": str(shards)}, "batch": {"global_size": args.global_batch, "micro_size": 2, **budget}})
    model = copy.deepcopy(base_model)
    stream = iter(build_stream(spec, model, processor, 0, 1, shards))
    accumulation = spec.batch.accumulation(1)
    steps = [step_batches(stream, accumulation) for _ in range(args.warmup + args.batch_steps)]  # decoded up front
    module = TrainModule(model, spec, 1, args.device)
    parts = PartTimes(module, args.device)
    for step in steps[:args.warmup]:
        module.train_step(iter(step))
    parts.reset()
    sync(args.device)
    t0, tokens, positions, micro, flops = time.perf_counter(), 0, 0, 0, 0.0
    for step in steps[args.warmup:]:
        stats = module.train_step(iter(step))
        tokens, positions, micro = tokens + stats["tokens"], positions + stats["positions"], micro + len(step)
        flops += sum(batch_flops(module.model, b) for b in step)
    sync(args.device)
    dt = time.perf_counter() - t0
    return {"mode": mode, "tokens_s": tokens / dt, "padded": 1 - tokens / positions, "s_step": dt / args.batch_steps,
            "micro": micro / args.batch_steps, "mfu": flops / dt / peak, **parts.times}


def batching_table(args) -> None:
    torch.manual_seed(0)
    model, processor, shards = demo_stage2(Path(tempfile.mkdtemp(prefix="bench-batching-")))
    peak = measured_peak_flops(args.device)
    for _ in range(2):  # the first round pays one-time costs (kernels per new shape, allocator); report the second
        rows = [run_mode(model, processor, shards, mode, args, peak) for mode in ("samples", "tokens", "packed")]
    print(f"\nbatching on the demo Stage-2 shards: global batch {args.global_batch} (units of 2), max_tokens "
          f"{args.max_tokens}, {args.batch_steps} measured steps after {args.warmup}, second of two rounds; peak matmul "
          f"{peak / 1e9:.1f} GFLOP/s measured now; times are sums over the measured steps")
    print(f"{'mode':<9}{'tokens/s':>10}{'padded':>8}{'mb/step':>9}{'s/step':>8}{'vis fwd':>9}{'vis bwd':>9}"
          f"{'LLM fwd':>9}{'LLM bwd':>9}{'MFU':>7}")
    for r in rows:
        print(f"{r['mode']:<9}{r['tokens_s']:>10.1f}{100 * r['padded']:>7.1f}%{r['micro']:>9.1f}{r['s_step']:>8.3f}"
              f"{r['vision_fwd']:>9.2f}{r['vision_bwd']:>9.2f}{r['llm_fwd']:>9.2f}{r['llm_bwd']:>9.2f}"
              f"{100 * r['mfu']:>6.2f}%")
    base = rows[0]["tokens_s"]
    print("tokens/s vs samples: " + ", ".join(f"{r['mode']} {r['tokens_s'] / base:.2f}x" for r in rows[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--steps", type=int, default=8, help="measured micro-batches")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--micro", type=int, default=2)
    ap.add_argument("--layers", type=int, default=4, help="GPU: LLM layers of the 7B-shaped slice")
    ap.add_argument("--seq-len", type=int, default=4096, help="GPU: tokens per sample")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="GPU: dense bf16 peak (H100/H200 SXM: 989)")
    ap.add_argument("--batching", action=argparse.BooleanOptionalAction, default=None,
                    help="the batching-mode table on the demo Stage-2 shards (default: on for CPU)")
    ap.add_argument("--global-batch", type=int, default=8, help="batching table: samples per step")
    ap.add_argument("--batch-steps", type=int, default=6, help="batching table: measured steps per mode")
    ap.add_argument("--max-tokens", type=int, default=256, help="batching table: token budget / packed row length")
    args = ap.parse_args()

    torch.manual_seed(0)
    init_distributed(args.device)
    if args.device == "cpu":
        synthetic = {"n_samples": 64, "seq_len": 24, "answer_len": 8, "image_px": 64}
        model, processor = cpu_model()
        dtype = torch.float32
    else:
        synthetic = {"n_samples": 64, "seq_len": args.seq_len, "answer_len": args.seq_len // 4}
        model, processor = slice_7b_model(args.layers)
        dtype = torch.bfloat16
    spec = stage2_spec(args.micro, args.micro, args.steps, synthetic)  # accumulation 1: one step per micro-batch
    data = batches(spec, model, processor, args.steps)
    seq = int(data[0]["attention_mask"].shape[1])
    import copy

    baseline_model = copy.deepcopy(model)
    s, t, dt, module = time_ours(model, spec, data, args.warmup, args.device)
    bs, bt, bdt = time_plain(baseline_model, data, args.warmup, args.device, dtype)
    print(f"device={args.device} micro={args.micro} seq_len={seq} measured_steps={args.steps} "
          f"params={sum(p.numel() for p in model.parameters()) / 1e6:.1f}M")
    print(f"{'stack':<28}{'samples/s':>12}{'tokens/s':>12}{'s/step':>10}")
    print(f"{'ours (DeepSpeed ZeRO-2)':<28}{s / dt:>12.2f}{t / dt:>12.1f}{dt / args.steps:>10.3f}")
    print(f"{'plain torch AdamW':<28}{bs / bdt:>12.2f}{bt / bdt:>12.1f}{bdt / args.steps:>10.3f}")
    print(f"ratio ours/plain tokens/s: {(t / dt) / (bt / bdt):.2f}")
    if args.device == "cuda":
        fpt = flops_per_token(module.model, spec, seq)
        mfu = fpt * t / dt / (args.peak_tflops * 1e12)
        print(f"estimated FLOPs/token {fpt / 1e9:.2f} GFLOP; MFU {100 * mfu:.1f}% of {args.peak_tflops} TFLOP/s")
    if args.batching if args.batching is not None else args.device == "cpu":
        batching_table(args)


if __name__ == "__main__":
    main()
