"""Real shapes on CPU: a SigLIP-so400m-shaped IVE and a Qwen2.5-0.5B-shaped LLM, 2 ZeRO-2 ranks, kill and resume.

Random weights from transformers configs (SigLIP-so400m/14 at 384 px: width 1152, 27 layers, MLP 4304, 16 heads,
so a video chunk of F=16 frames is a 27x27 = 729-patch grid; Qwen2.5-0.5B: width 896, 24 layers, MLP 4864, 14
heads, 2 KV heads, vocabulary 151936, tied embeddings; 3 IFA layers; 965M parameters) and the tiny demo tokenizer.
Data: Stage-2 shards built by the curation library (ingest, mixture draw, shard build with the so400m patch 14)
from the demo corpus's video QA, image QA (with its two-image sample) and composite sources plus a small text-only
math source (the paper's Stage 2 mixes in OpenMathInstruct-2-style text). The data seed is the first whose 3 steps
x 2 ranks (read from the loader's own order) hold a text-only sample beside a visual one (a rank with no visual
input), a single image, a video and a multi-image sample, so a change of the loader's order changes the seed, not
what is covered.

Memory: fp32 (bf16 matmuls run ~30x slower than fp32 on this CPU, no AVX512-BF16) with the Stage-1 freeze
pattern (IVE and LLM frozen, IFA and projector trainable, 48M parameters): weights 3.9 GB per rank, the
optimizer only the trainable 48M; all-trainable fp32 ZeRO-2 would be ~11.7 GB per rank. Micro batch 1, global
batch 2.

Three launches through the real ``deepspeed`` launcher (gloo, one thread per rank): 3 steps straight; 3 steps with
a SIGKILL of both ranks right after step 3 (checkpoint of step 2 only); the relaunch resumes at step 2 and
redoes step 3. The resumed run's losses equal the straight run's bit for bit and its exported weights have the
same fingerprints. Peak RSS per rank (VmHWM, polled) and s/step are printed, not asserted. Measured on an otherwise
idle machine (load ~2, these two ranks; data seed 42: text|video, video|image, text|multi-image): 5.9 / 5.7 GiB per
rank (11.2 GiB together) straight, 5.3 / 5.3 GiB on resume (checkpoints hold the trainable parameters only);
s/step 20.7, 21.9, 9.6 and 7.9 for the redone step.

    pytest -q -s -m slow tests/trainers/test_real_shapes.py      # 5 min on 2 idle cores, 18 at load 6-7
"""
from __future__ import annotations

import itertools
import json
import math
import shutil
import threading
from pathlib import Path

import psutil
import pytest
import yaml

from core.faults import FAULT_ENV
from core.paths import MANIFESTS
from core.processes import free_port, process_memory, run_logged
from trainers.launch import Launch, deepspeed_command
from trainers.metrics import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

STEPS, CHECKPOINT_EVERY = 3, 2


def build_real_shaped(out: Path) -> Path:
    """A random-weight Mavors of the cluster's vision shape and a 0.5B Qwen2.5 shape, saved with its processor."""
    import torch
    from transformers import Qwen2Config, SiglipVisionConfig

    from demo.tiny_models import make_tokenizer
    from model import MavorsConfig, MavorsForConditionalGeneration
    from model.conversion import placeholder_ids
    from model.processing import MavorsProcessor

    tok = make_tokenizer()
    vision = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                num_attention_heads=16, image_size=384, patch_size=14)
    text = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                       rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
                       bos_token_id=tok.pad_token_id, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                       pad_token_id=tok.pad_token_id)
    config = MavorsConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), frames_per_chunk=16,
                          ifa_num_layers=3, ifa_num_heads=16, **placeholder_ids(tok))
    torch.manual_seed(0)
    model = MavorsForConditionalGeneration(config)
    model.save_pretrained(out)
    MavorsProcessor.from_config(model.config, tok).save_pretrained(out)
    return out


def build_stage2_shards(demo_corpus: Path, root: Path) -> Path:
    """Demo Stage-2 mixture plus a text-only source, ingested and sharded for patch 14; the shard folder."""
    from curation.mixtures import MixtureConfig
    from demo.shards import stage_shards

    text = root / "text_math"
    text.mkdir(parents=True)
    items = [{"id": f"math-{i}", "conversations": [{"from": "human", "value": f"What is {i} plus {i + 1}?"},
                                                   {"from": "gpt", "value": f"{i} plus {i + 1} is {2 * i + 1}."}]}
             for i in range(4)]
    (text / "annotations.json").write_text(json.dumps(items))
    (text / "text_math.yaml").write_text("name: text_math\nmodality: mixed\ntask: qa\nformat: llava_json\n"
                                         "path: annotations.json\n")
    mixture = yaml.safe_load((MANIFESTS / "mixtures" / "demo-stage2.yaml").read_text())
    mixture["stages"]["2"].append({"source": "text_math", "count": "all", "category": "Instruction"})
    mixture["transcode"]["patch_size"] = 14
    return stage_shards(demo_corpus, MixtureConfig.model_validate(mixture), "2", root, [text / "text_math.yaml"])


class _Kinds:
    """A stand-in processor that reports each sample's modality instead of encoding it (the loader's order does
    not depend on the processor)."""

    def encode(self, conversation, media, name):
        videos = sum(t["value"].count("<video>") for t in conversation)
        return {"kind": "video" if videos else {0: "text", 1: "image"}.get(len(media), "multi-image")}

    def collate(self, samples):
        return {"kind": [s["kind"] for s in samples]}


def arrangement(shards: Path, seed: int) -> list[tuple[str, ...]]:
    """The modalities of each step's sample on rank 0 and rank 1 (the loader at the spec's data defaults)."""
    from trainers.data import build_loader

    per_rank = [[b["kind"][0] for b in itertools.islice(
        build_loader(shards, _Kinds(), micro_size=1, rank=r, world_size=2, seed=seed, shuffle_window=1000), STEPS)]
        for r in range(2)]
    return list(zip(*per_rank))


def covering_seed(shards: Path) -> tuple[int, list[tuple[str, ...]]]:
    """The first data seed whose steps hold text beside a visual sample, an image, a video and a multi-image."""
    for seed in range(1000):
        steps = arrangement(shards, seed)
        kinds = {k for step in steps for k in step}
        if {"image", "video", "multi-image"} <= kinds and any("text" in s and set(s) != {"text"} for s in steps):
            return seed, steps
    raise AssertionError(f"{shards}: no seed below 1000 arranges every modality over {STEPS} steps x 2 ranks")


class PeakRSS:
    """Polls the ranks (``trainers.stage`` processes under this one) for their peak RSS (VmHWM) and the largest
    summed RSS seen, while a launch runs."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.per_rank, self.total = interval, {}, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in me.children(recursive=True):
                try:
                    if "trainers.stage" not in " ".join(p.cmdline()):
                        continue
                    rank = p.environ().get("RANK")
                    if rank is None:  # the launcher's own process
                        continue
                    hwm = process_memory("VmHWM", p.pid)
                    total += p.memory_info().rss
                    self.per_rank[rank] = max(self.per_rank.get(rank, 0), hwm)
                except (psutil.Error, OSError, ValueError):
                    continue
            self.total = max(self.total, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def line(self, what: str) -> str:
        ranks = " ".join(f"rank{r} {v / 2**30:.2f} GiB" for r, v in sorted(self.per_rank.items()))
        return f"{what}: peak RSS {ranks}; largest sum {self.total / 2**30:.2f} GiB"


def seconds_per_step(records: list[dict]) -> list[float]:
    return [r["samples"] / r["samples_per_s"] for r in records]


@pytest.fixture(scope="module")
def real_work(demo_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("real-shapes")
    yield root, build_real_shaped(root / "mavors-real"), build_stage2_shards(demo_corpus, root / "data")
    shutil.rmtree(root, ignore_errors=True)  # ~20 GB of weights, checkpoints and exports


def test_real_shapes_two_ranks_kill_and_resume(real_work):
    root, model_dir, shards = real_work
    seed, steps = covering_seed(shards)
    print(f"data seed {seed}: modalities per step (rank 0, rank 1) {steps}")
    spec = {
        "name": "real", "init": {"pretrained": str(model_dir)}, "data": {"shards": str(shards), "seed": seed},
        "modules": {"ive": {"trainable": False}, "ifa": {"trainable": True, "lr_scale": 0.1},
                    "projector": {"trainable": True}, "llm": {"trainable": False}},
        "optim": {"lr": 1e-3}, "schedule": {"kind": "constant"},
        "batch": {"global_size": 2, "micro_size": 1}, "budget": {"steps": STEPS},
        "checkpoint_every": CHECKPOINT_EVERY, "keep_checkpoints": 1,
    }
    spec_path = root / "real.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    hostfile = root / "hostfile"
    hostfile.write_text("localhost slots=2\n")

    def launch(run: str, fault: str | None = None) -> PeakRSS:
        env = {"OMP_NUM_THREADS": "1", **({FAULT_ENV: fault} if fault else {})}
        cmd = deepspeed_command(spec_path, root / run, root, Launch(hostfile=hostfile, master_port=free_port()))
        with PeakRSS() as rss:
            try:
                run_logged(cmd, root / f"{run}.log", env=env, what="launcher")
            finally:
                print(rss.line(run))
        return rss

    launch("straight")
    straight = read_metrics(root / "straight" / "real" / "metrics.jsonl")
    print("straight s/step", [f"{s:.1f}" for s in seconds_per_step(straight)])
    assert [r["step"] for r in straight] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in straight)
    assert [r["samples"] for r in straight] == [2, 2, 2]
    # visual input per step and rank, as arranged: none on the text rank
    assert [[v > 0 for v in r["visual_tokens_per_rank"]] for r in straight] == [
        [k != "text" for k in step] for step in steps]

    with pytest.raises(RuntimeError, match="launcher exited"):
        launch("killed", fault=f"trainer-real@{STEPS}")
    assert f"SIGKILL during step trainer-real (after training step {STEPS})" in (root / "killed.log").read_text()
    ckpt = root / "killed" / "real" / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == f"step_{CHECKPOINT_EVERY:09d}"
    before_kill = read_metrics(root / "killed" / "real" / "metrics.jsonl")
    assert [r["loss"] for r in before_kill] == [r["loss"] for r in straight]

    launch("killed")
    resumed = read_metrics(root / "killed" / "real" / "metrics.jsonl")
    print("resumed s/step", [f"{s:.1f}" for s in seconds_per_step(resumed[CHECKPOINT_EVERY:])])
    assert [r["step"] for r in resumed] == [1, 2, 3]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    record = json.loads((root / "killed" / "real" / "export" / "stage.json").read_text())
    want = json.loads((root / "straight" / "real" / "export" / "stage.json").read_text())
    assert record["world_size"] == 2 and record["resumed_from_step"] == CHECKPOINT_EVERY
    assert record["fingerprints"] == want["fingerprints"]
    for module in ("ive", "llm"):  # frozen
        assert record["fingerprints"][module] == record["init_fingerprints"][module]
    for module in ("ifa", "projector"):
        assert record["fingerprints"][module] != record["init_fingerprints"][module]
