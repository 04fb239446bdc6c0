"""Training throughput: samples/s and tokens/s of a stage step through our DeepSpeed ZeRO-2 stack,
against a plain PyTorch AdamW loop on the same model and batches, measured in the same run.

    python benchmarks/train.py                      # CPU: tiny Mavors, image conversations, Stage-2 rules
    python benchmarks/train.py --device cuda --layers 4 --seq-len 4096 --peak-tflops 989
        # GPU: a 7B-shaped LLM slice (Qwen2.5-7B widths, N layers, random bf16 weights) -> MFU

MFU = (estimated FLOPs per token x tokens/s) / peak FLOPs, with the per-token estimate of
``trainers.metrics.flops_per_token`` (6N for trained weights + attention, torchtitan's formula).
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--steps", type=int, default=8, help="measured micro-batches")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--micro", type=int, default=2)
    ap.add_argument("--layers", type=int, default=4, help="GPU: LLM layers of the 7B-shaped slice")
    ap.add_argument("--seq-len", type=int, default=4096, help="GPU: tokens per sample")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="GPU: dense bf16 peak (H100/H200 SXM: 989)")
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


if __name__ == "__main__":
    main()
