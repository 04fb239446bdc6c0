"""Two gloo ranks under real DeepSpeed ZeRO-2 with mixed modalities (tiny Mavors, ``two_rank_worker.py``).

Every stage's freeze pattern trains while one rank's micro-batches are text-only (or refused outright)
and the other's hold video, images and multi-image samples: no collective mismatch, bit-identical weights
on both ranks after every step. The step-1 gradient (2 ranks x 2 accumulation steps) equals a plain
single-process torch gradient of the global-batch mean over the same samples (answer-token mean for
next-token loss, pair mean for DPO), and differs from the mean of per-micro-batch means. Stage 2 on the same
samples in packed rows, where the ranks need different numbers of rows per step, gives the same gradient; the
metrics report each rank's vision work.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from core.processes import free_port, project_env
from mixed_batches import ARRANGEMENT, REFUSED, rank_plan
from trainers.metrics import read_metrics

WORKER = Path(__file__).parent / "two_rank_worker.py"
STAGES = ("stage1", "stage1_5", "stage2", "dpo", "stage2-packed")
FROZEN = {"stage1": {"ive", "llm"}, "stage1_5": {"llm"}, "stage2": set(), "dpo": set(), "stage2-packed": set()}


@pytest.fixture(scope="module")
def two_ranks(tiny_models, tmp_path_factory) -> Path:
    """Run both ranks once for all stages; the directory of their results."""
    out = tmp_path_factory.mktemp("two-ranks")
    port = str(free_port())
    logs = [(out / f"rank{r}.log").open("wb") for r in range(2)]
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(tiny_models["mavors"]), str(out)],
                              env=project_env({"RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r),
                                               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}),
                              stdout=logs[r], stderr=subprocess.STDOUT) for r in range(2)]
    try:
        codes = [p.wait(timeout=800) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for log in logs:
            log.close()
    if any(codes):
        tails = "\n".join((out / f"rank{r}.log").read_text(errors="replace")[-3000:] for r in range(2))
        raise RuntimeError(f"ranks exited with {codes}:\n{tails}")
    return out


def result(out: Path, stage: str, rank: int) -> dict:
    return json.loads((out / f"{stage}.rank{rank}.json").read_text())


@pytest.mark.parametrize("stage", STAGES)
def test_both_ranks_hold_identical_weights_after_every_step(two_ranks, stage):
    r0, r1 = result(two_ranks, stage, 0), result(two_ranks, stage, 1)
    assert len(r0["after_step"]) == 2
    assert r0["after_step"] == r1["after_step"]
    assert r0["after_step"][0] != r0["after_step"][1]
    for module, before in r0["before"].items():
        changed = r0["after"][module] != before
        assert changed == (module not in FROZEN[stage]), f"{stage}: {module} changed={changed}"


def test_metrics_list_refused_samples_and_the_global_loss(two_ranks, tiny_models):
    """Rank 0's metrics record of step 1 lists the refused sample with its reason and rank; its loss is the
    global-batch token mean, the sum of the two ranks' shares."""
    records = read_metrics(two_ranks / "stage2.metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["skipped"] == [{**REFUSED, "rank": 0}] and records[1]["skipped"] == []
    shares = [result(two_ranks, "stage2", r)["losses"][0] for r in range(2)]
    assert records[0]["loss"] == pytest.approx(sum(shares), rel=1e-12)
    assert records[0]["samples"] == sum(len(ids) for r in range(2) for ids in ARRANGEMENT[r][0])


def test_metrics_report_each_ranks_vision_work(two_ranks, tiny_models):
    """``visual_tokens_per_rank``: the image/video placeholders of each rank's step-1 batches, counted here from
    the processor's ids; ``vision_imbalance`` their max / mean (rank 0 is text-only at step 1)."""
    from model.processing import MavorsProcessor

    proc = MavorsProcessor.from_pretrained(tiny_models["mavors"])
    visual_ids = torch.tensor([proc.image_token_id, proc.video_token_id])
    plan = rank_plan(proc, dpo=False)
    loads = [sum(int(torch.isin(b["input_ids"], visual_ids).sum()) for b in plan[r][0] if b["sample_id"])
             for r in range(2)]
    assert loads[0] == 0 < loads[1]
    for stage in ("stage2", "stage2-packed"):
        record = read_metrics(two_ranks / f"{stage}.metrics.jsonl")[0]
        assert record["visual_tokens_per_rank"] == loads, stage
        assert record["vision_imbalance"] == pytest.approx(max(loads) / (sum(loads) / 2)), stage


def test_packed_rows_give_the_same_step(two_ranks):
    """Packed, rank 1's step-1 samples need 3 rows and rank 0's 1: both ran 3 micro-batches (step 2: 2 and 2), and
    the step's global loss is the unpacked one."""
    packed, plain = (read_metrics(two_ranks / f"{s}.metrics.jsonl") for s in ("stage2-packed", "stage2"))
    assert [r["micro_batches"] for r in packed] == [3, 2] and [r["micro_batches"] for r in plain] == [2, 2]
    assert packed[0]["loss"] == pytest.approx(plain[0]["loss"], rel=1e-5)
    assert packed[0]["skipped"] == plain[0]["skipped"]


# ---- the single-process reference --------------------------------------------------------------------
def _inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in ("labels", "sample_id", "skipped")}


def _token_nll(model, batch: dict) -> torch.Tensor:
    """(B,) summed next-token NLL of each row's answer tokens, by F.cross_entropy on the plain model."""
    logits = model(**_inputs(batch)).logits[:, :-1].float()  # (B, T-1, V)
    targets = batch["labels"][:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")  # (B, T-1)
    return nll.sum(-1)


def _step1(tiny_models, dpo: bool) -> list[dict]:
    from model.processing import MavorsProcessor

    plan = rank_plan(MavorsProcessor.from_pretrained(tiny_models["mavors"]), dpo)
    return [b for r in range(2) for b in plan[r][0] if b["sample_id"]]


def _reference_grads(tiny_models, loss_fn) -> dict[str, torch.Tensor]:
    from model.modeling import MavorsForConditionalGeneration

    model = MavorsForConditionalGeneration.from_pretrained(tiny_models["mavors"]).eval()  # no zero-chunk path
    loss_fn(model).backward()
    return {n: p.grad for n, p in model.named_parameters()}


def _assert_grads_equal(got: dict, want: dict, rel: float = 1e-5) -> None:
    assert got.keys() == want.keys()
    total = torch.cat([w.flatten() for w in want.values()]).norm()
    for name, w in want.items():
        err = (got[name] - w).norm()
        assert err <= rel * max(w.norm(), 1e-3 * total), f"{name}: |diff| {err:.3g} vs |grad| {w.norm():.3g}"


def _relative_distance(got: dict, want: dict) -> float:
    diff = torch.cat([(got[n] - w).flatten() for n, w in want.items()]).norm()
    return float(diff / torch.cat([w.flatten() for w in want.values()]).norm())


@pytest.mark.parametrize("stage", ["stage2", "stage2-packed"])
def test_ntp_gradient_is_the_global_token_mean(two_ranks, tiny_models, stage):
    got = torch.load(two_ranks / f"{stage}.grad.pt")
    batches = _step1(tiny_models, dpo=False)
    counts = [int((b["labels"][:, 1:] != -100).sum()) for b in batches]
    rank0 = sum(counts[:1])  # rank 0's only non-empty micro-batch comes first
    assert sum(counts) - rank0 > 10 * rank0  # rank 1 has far more answer tokens
    want = _reference_grads(tiny_models, lambda m: sum(_token_nll(m, b).sum() for b in batches) / sum(counts))
    _assert_grads_equal(got, want)
    # what averaging per-micro-batch means over ranks and accumulation steps would give (rank 0: 1 + empty)
    naive = _reference_grads(tiny_models, lambda m: (_token_nll(m, batches[0]).sum() / counts[0] / 2
                                                     + sum(_token_nll(m, b).sum() / c
                                                           for b, c in zip(batches[1:], counts[1:])) / 2) / 2)
    assert _relative_distance(naive, want) > 0.05


def test_dpo_gradient_is_the_global_pair_mean(two_ranks, tiny_models):
    got = torch.load(two_ranks / "dpo.grad.pt")
    batches = _step1(tiny_models, dpo=True)
    beta = 0.1  # manifests/stages/demo-dpo.yaml

    def loss(model):
        terms = []
        for b in batches:
            margin = (-_token_nll(model, b["chosen"]) - b["ref_chosen_logps"]) \
                - (-_token_nll(model, b["rejected"]) - b["ref_rejected_logps"])  # (B,)
            terms.append(-F.logsigmoid(beta * margin))
        return torch.cat(terms).mean()

    _assert_grads_equal(got, _reference_grads(tiny_models, loss))
