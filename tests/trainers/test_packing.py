"""Token budgets and packing (trainers/packing.py): micro-batches by hand-worked budgets, the processor's token plan
against what it encodes, packed rows against the same samples run alone (plain cross-entropy on the plain model),
the samples of every step across batch modes on real shards, one DeepSpeed step's gradient packed vs unpacked, and
vision balance by hand.

    pytest tests/trainers/test_packing.py -q
"""
from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import toy_spec
from mixed_batches import SAMPLES, conversation
from trainers.packing import (BudgetStream, balance_ranks, budget_groups, imbalance, pack_rows,
                              planned_visual_tokens, segment_sums)

MIXED = ["text-short", "video", "image", "two-images", "big-image", "text-long", "text-mid"]


# ---- pure functions, worked by hand -------------------------------------------------------------------
def test_budget_groups_by_hand():
    lengths = [5, 9, 3, 7, 2]  # longest first: 9 (1), 7 (3), 5 (0), 3 (2), 2 (4)
    # first-fit decreasing into rows of 10: 9 | 7 | 5 opens a row | 3 joins 7 | 2 joins 5
    assert budget_groups(lengths, 10, packed=True) == [[1], [3, 2], [0, 4]]
    # padded: rows x longest <= 10: [9] | [7] (2x9 > 10) | [5] (2x7) | [5, 3] (2x5) | [2] (3x5 > 10)
    assert budget_groups(lengths, 10, packed=False) == [[1], [3], [0, 2], [4]]


def test_a_sample_over_the_budget_goes_alone_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="trainers.packing"):
        assert budget_groups([3, 12, 4], 10, packed=True) == [[1], [2, 0]]
        assert budget_groups([3, 12, 4], 10, packed=False) == [[1], [2, 0]]
    assert sum("12 LLM tokens exceeds max_tokens 10" in r.message for r in caplog.records) == 2


def test_balance_ranks_by_hand():
    costs = [7, 5, 4, 3, 3, 2]
    # longest first to the least-loaded rank: 7->r0, 5->r1, 4->r1 (5<7), 3->r0 (7<9), 3->r1 (9<10), 2->r0 (10<12)
    assert balance_ranks(costs, 2) == [[0, 3, 5], [1, 2, 4]]  # 12 | 12
    assert imbalance([12, 12]) == 1.0
    assert imbalance([7 + 5 + 4, 3 + 3 + 2]) == pytest.approx(16 / 12)  # the contiguous split it replaces
    # three ranks: 7->r0, 5->r1, 4->r2, 3->r2 (4), 3->r1 (5<7, 7), 2->r0 (7=7, lowest rank)
    assert balance_ranks(costs, 3) == [[0, 5], [1, 4], [2, 3]]  # 9 | 8 | 7
    assert imbalance([9, 8, 7]) == pytest.approx(9 / 8)
    assert imbalance([0, 0]) is None
    # equal counts: 10->r0, 1->r1, 1->r1 (1<10), r1 is full (2 of 4), so the last 1 goes to r0 whatever its load
    assert balance_ranks([10, 1, 1, 1], 2) == [[0, 3], [1, 2]]  # 11 | 2; unconstrained LPT: [0] | [1, 2, 3]
    assert balance_ranks([4, 9, 1, 6, 2], 2) == [[1, 2, 4], [0, 3]]  # 9->r0, 6->r1, 4->r1, 2->r0, 1->r0: 12 | 10


def test_pack_rows_restarts_positions_and_ignores_first_labels():
    batch = {"input_ids": torch.tensor([[5, 6, 7], [8, 9, 0]]), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
             "labels": torch.tensor([[5, 6, 7], [8, 9, -100]]), "pixel_values": torch.zeros(0, 4)}
    row = pack_rows(batch)
    assert row["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert row["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert row["labels"].tolist() == [[-100, 6, 7, -100, 9]]
    assert row["sample_lengths"] == [3, 2] and "attention_mask" not in row
    assert segment_sums(torch.tensor([[1.0, 2, 3, 4, 5]]), [3, 2]).tolist() == [6.0, 9.0]


def test_spec_knobs():
    spec = toy_spec(batch={"global_size": 4, "micro_size": 2, "mode": "packed", "max_tokens": 512})
    assert (spec.batch.mode, spec.batch.max_tokens) == ("packed", 512)
    assert toy_spec().batch.mode == "samples"
    assert toy_spec().data.deal == "strided"
    with pytest.raises(Exception, match="synthetic data deals strided"):
        toy_spec(data={"synthetic": {"n_samples": 8}, "deal": "vision"})
    with pytest.raises(Exception, match="needs max_tokens"):
        toy_spec(batch={"global_size": 4, "micro_size": 2, "mode": "tokens"})
    with pytest.raises(Exception, match="only applies"):
        toy_spec(batch={"global_size": 4, "micro_size": 2, "max_tokens": 64})
    with pytest.raises(Exception, match="DPO pairs use mode samples"):
        toy_spec(batch={"global_size": 4, "micro_size": 2, "mode": "packed", "max_tokens": 64},
                 loss={"kind": "dpo", "beta": 0.1})


# ---- the tiny Mavors -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def processor(tiny_models):
    from model.processing import MavorsProcessor

    return MavorsProcessor.from_pretrained(tiny_models["mavors"])


def _meta(source) -> dict:
    """The shard metadata of an in-memory medium: (H, W, 3) image, (T, H, W, 3) video at the processor's fps."""
    if source.ndim == 3:
        return {"kind": "image", "width": source.shape[1], "height": source.shape[0]}
    return {"kind": "video", "width": source.shape[2], "height": source.shape[1], "n_frames": source.shape[0]}


def _write_mp4(path: Path, frames: np.ndarray, fps: int) -> Path:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path


def test_plan_counts_the_tokens_encode_makes(processor, tmp_path):
    """The plan from metadata alone equals the encoded length and placeholder count, for every modality, and for
    a real mp4 (10 fps, 23 frames: 2.3 s resampled to the processor's fps) described as the shard build does."""
    visual_ids = torch.tensor([processor.image_token_id, processor.video_token_id])
    cases = {s: (conversation(s), SAMPLES[s][3], [{**_meta(m), "fps": processor.video_fps} for m in SAMPLES[s][3]])
             for s in MIXED}
    frames = np.random.default_rng(0).integers(0, 256, (23, 40, 56, 3), dtype=np.uint8)
    mp4 = _write_mp4(tmp_path / "clip.mp4", frames, fps=10)
    cases["mp4"] = ([{"from": "human", "value": "<video>\nWhat?"}, {"from": "gpt", "value": "shapes"}], [str(mp4)],
                    [{"kind": "video", "width": 56, "height": 40, "n_frames": 23, "fps": 10, "duration_s": 2.3}])
    for name, (conv, media, meta) in cases.items():
        encoded = processor.encode(conv, media, name=name)
        plan = processor.plan(conv, meta, name=name)
        assert plan.tokens == encoded["input_ids"].shape[0], name
        assert plan.visual_tokens == int(torch.isin(encoded["input_ids"], visual_ids).sum()), name
    assert processor.plan(*cases["mp4"][::2]).visual_tokens > 0


def _nll(model, batch: dict) -> torch.Tensor:
    """(B, T) next-token NLL of every position (0 where no answer follows), plain F.cross_entropy."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "sample_lengths")}
    logits = model(**inputs).logits[:, :-1].float()  # (B, T-1, V)
    nll = F.cross_entropy(logits.transpose(1, 2), batch["labels"][:, 1:], ignore_index=-100, reduction="none")
    return torch.cat([nll, nll.new_zeros(nll.shape[0], 1)], 1)


def test_packed_row_gives_each_sample_its_unpacked_loss(tiny_models, processor):
    from model.modeling import MavorsForConditionalGeneration

    model = MavorsForConditionalGeneration.from_pretrained(tiny_models["mavors"]).eval()
    samples = [processor.encode(conversation(s), SAMPLES[s][3], name=s) for s in MIXED]
    with torch.no_grad():
        alone = torch.stack([_nll(model, processor.collate([s])).sum() for s in samples])  # (S,)
        row = pack_rows(processor.collate(samples))
        packed = segment_sums(_nll(model, row), row["sample_lengths"])
        leaky = segment_sums(_nll(model, {**row, "position_ids": torch.arange(row["input_ids"].shape[1])[None]}),
                             row["sample_lengths"])  # one long sequence: attention crosses samples
    assert row["input_ids"].shape == (1, sum(s["input_ids"].shape[0] for s in samples))
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=0)
    assert float(((leaky - alone).abs() / alone).max()) > 1e-3


# ---- real shards through the stage's stream, every batch mode ------------------------------------------
@pytest.fixture(scope="module")
def mixed_shards(tmp_path_factory, processor) -> Path:
    """Two shards as the mixture build writes them: text-only, image, two-image, larger-image and video (mp4 at
    the processor's fps, described as the transcoder does) samples; 14 samples."""
    import io

    from PIL import Image

    from curation.shards.format import sample_record
    from curation.shards.writer import write_records

    root = tmp_path_factory.mktemp("mixed-shards")
    fps = int(processor.video_fps)
    records = []
    for n in range(14):
        sid = MIXED[n % len(MIXED)]
        media = []
        for i, m in enumerate(SAMPLES[sid][3]):
            if m.ndim == 3:
                buf = io.BytesIO()
                Image.fromarray(m).save(buf, format="PNG")
                media.append((buf.getvalue(), "png", _meta(m)))
            else:
                path = _write_mp4(root / f"{n}-{i}.mp4", m, fps)
                media.append((path.read_bytes(), "mp4", {**_meta(m), "fps": fps, "duration_s": m.shape[0] / fps}))
        records.append(sample_record(f"{sid}/{n}", {"sample_id": f"{sid}/{n}", "conversation": conversation(sid)},
                                     media))
    for part in range(2):
        write_records(records[part * 7:(part + 1) * 7], root / "s" / f"part{part}", prefix=f"p{part}",
                      max_samples=100, max_bytes=1 << 24)
    return root / "s"


def test_shard_records_balance_by_planned_visual_tokens(mixed_shards, processor):
    """Visual tokens planned from the records' JSON equal the placeholders their decoding makes; dealing the 14
    records to 2 ranks longest-first is at least as even as dealing them round-robin."""
    import json

    from curation.shards.read import iter_samples, list_shards
    from trainers.data import decode_sample

    raws = list(iter_samples(s.url for s in list_shards(mixed_shards)))
    costs = planned_visual_tokens([json.loads(r["json"]) for r in raws], processor)
    visual_ids = torch.tensor([processor.image_token_id, processor.video_token_id])
    assert costs == [int(torch.isin(decode_sample(r, processor, False)["features"]["input_ids"], visual_ids).sum())
                     for r in raws]
    ranks = balance_ranks(costs, 2)
    assert sorted(i for r in ranks for i in r) == list(range(14))
    loads = [sum(costs[i] for i in r) for r in ranks]
    every_other = [sum(costs[0::2]), sum(costs[1::2])]  # a round-robin deal by position
    assert imbalance(loads) <= imbalance(every_other)
    assert max(loads) - min(loads) <= max(costs)  # LPT: the last sample dealt went to the lighter rank


def _dealt(shards: Path, processor, deal: str, rank: int, world: int = 2, workers: int = 0, state=None):
    """A loader of micro-batches of one sample, 4 samples a step (2 ranks x 2 accumulation, or 1 x 4)."""
    from trainers.data import build_loader

    loader = build_loader(shards, processor, micro_size=1, rank=rank, world_size=world, seed=0, shuffle_window=4,
                          num_workers=workers, deal=deal, global_size=4)
    if state is not None:
        loader.load_state_dict(state)
    return loader


def _first(loader, n: int) -> list[dict]:
    return list(itertools.islice(iter(loader), n))


def test_vision_deal_balances_every_steps_samples(mixed_shards, processor):
    """Each step's block of 4 samples is the strided deal's set (and the one-rank run's), dealt 2 + 2 so the heavier
    rank carries the fewest visual tokens any 2 + 2 split gives (brute force over the splits; tokens counted
    from the decoded placeholders, not planned); over 4 steps max/mean is lower than strided's. Workers do
    not change the deal."""
    visual_ids = torch.tensor([processor.image_token_id, processor.video_token_id])
    steps = 4
    runs = {deal: [_first(_dealt(mixed_shards, processor, deal, r), 2 * steps) for r in (0, 1)]
            for deal in ("strided", "vision")}
    cost = {b["sample_id"][0]: int(torch.isin(b["input_ids"], visual_ids).sum())
            for r in runs["strided"] for b in r}
    one_rank = _first(_dealt(mixed_shards, processor, "vision", 0, world=1), 4 * steps)
    worse = {}
    for deal, (r0, r1) in runs.items():
        ids = [[[b["sample_id"][0] for b in r[2 * s:2 * s + 2]] for r in (r0, r1)] for s in range(steps)]
        assert [sorted(a + b) for a, b in ids] == [sorted(b["sample_id"][0] for b in one_rank[4 * s:4 * s + 4])
                                                   for s in range(steps)], deal
        loads = [[sum(cost[i] for i in rank) for rank in step] for step in ids]
        worse[deal] = [max(step) for step in loads]
        if deal == "vision":
            for (a, b), step_loads in zip(ids, loads):
                block = a + b
                best = min(max(sum(cost[block[i]] for i in half),
                               sum(cost[block[i]] for i in range(4) if i not in half))
                           for half in itertools.combinations(range(4), 2))
                assert max(step_loads) == best, (block, [cost[i] for i in block])
    assert all(v <= s for v, s in zip(worse["vision"], worse["strided"]))
    assert sum(worse["vision"]) < sum(worse["strided"])
    with_worker = _first(_dealt(mixed_shards, processor, "vision", 0, workers=1), 2 * steps)
    assert [b["sample_id"] for b in with_worker] == [b["sample_id"] for b in runs["vision"][0]]


def test_vision_deal_resumes_inside_a_step_and_at_its_boundary(mixed_shards, processor):
    """Inside a step the state is the step's start plus the rank's micro-batches done (resumed exactly, on the same
    deal and world size only); at a step boundary it is the strided deal's state."""
    loader = _dealt(mixed_shards, processor, "vision", 0)
    stream = iter(loader)
    next(stream), next(stream)
    boundary = loader.state_dict()
    next(stream)  # the first micro-batch of step 2
    inside = loader.state_dict()
    rest = [next(stream)["sample_id"] for _ in range(3)]
    assert inside["step_micro"] == {"done": 1, "world_size": 2} and inside["position"] == 4
    resumed = _dealt(mixed_shards, processor, "vision", 0, state=inside)
    assert [b["sample_id"] for b in _first(resumed, 3)] == rest
    strided = _dealt(mixed_shards, processor, "strided", 0)
    _first(strided, 2)
    assert strided.state_dict() == boundary
    for deal, world in (("strided", 2), ("vision", 1)):
        with pytest.raises(ValueError, match="inside a step of a vision deal on 2 ranks"):
            _dealt(mixed_shards, processor, deal, 0, world=world, state=inside)


def _stream(mode: str, shards: Path, processor, max_tokens: int | None = None):
    from trainers.batches import build_stream

    batch = {"global_size": 4, "micro_size": 2, "mode": mode, **({"max_tokens": max_tokens} if max_tokens else {})}
    spec = toy_spec(data={"shards": str(shards), "shuffle_window": 4}, batch=batch)
    return build_stream(spec, None, processor, rank=0, world=1, work_dir=shards)


def _steps(stream, n_steps: int) -> list[list[dict]]:
    from trainers.module import step_batches

    it = iter(stream)
    return [step_batches(it, 2) for _ in range(n_steps)]


def _llm_tokens(batch: dict) -> int:
    return batch["input_ids"].numel()  # rows x width: padding counts against the budget


def test_budget_modes_keep_each_steps_samples_and_the_budget(mixed_shards, processor):
    fixed = _steps(_stream("samples", mixed_shards, processor), 6)
    reference = [sorted(s for b in step for s in b["sample_id"]) for step in fixed]
    planned = [b["sample_id"] for step in fixed for b in step]
    assert len({s for step in reference for s in step}) == 14  # an epoch and a bit: every sample seen
    longest = max(processor.encode(conversation(s), SAMPLES[s][3], name=s)["input_ids"].shape[0] for s in MIXED)
    for mode in ("tokens", "packed"):
        budget = longest + 20  # the longest sample fits; two long ones do not
        steps = _steps(_stream(mode, mixed_shards, processor, budget), 6)
        assert [sorted(s for b in step for s in b["sample_id"]) for step in steps] == reference, mode
        batches = [b for step in steps for b in step]
        assert all(_llm_tokens(b) <= budget for b in batches), mode
        assert [b["sample_id"] for b in batches] != planned, mode  # really re-formed
        if mode == "packed":
            assert all(b["input_ids"].shape[0] == 1 and "attention_mask" not in b for b in batches)


def test_budget_stream_resumes_at_a_step_boundary(mixed_shards, processor):
    stream = _stream("packed", mixed_shards, processor, 400)
    first = _steps(stream, 2)
    state = stream.state_dict()
    rest = [b["sample_id"] for step in _steps(stream, 2) for b in step]
    resumed = _stream("packed", mixed_shards, processor, 400)
    resumed.load_state_dict(state)
    assert [b["sample_id"] for step in _steps(resumed, 2) for b in step] == rest
    assert state["position"] == 8 and len(first) == 2  # 2 steps x 2 units x micro 2, one rank


# ---- one DeepSpeed step: packed gradient == unpacked gradient ------------------------------------------
STEP = [["video", "text-short"], ["two-images", "image"]]  # one step: 2 accumulation steps x micro 2


def _spec(tiny_models, **batch):
    from trainers.spec import StageSpec

    return StageSpec.model_validate({
        "name": "packing", "init": {"pretrained": str(tiny_models["mavors"])},
        "data": {"synthetic": {"n_samples": 4}}, "modules": {m: {"trainable": True} for m in
                                                            ("ive", "ifa", "projector", "llm")},
        "optim": {"lr": 1e-3}, "batch": {"global_size": 4, "micro_size": 2, **batch}, "budget": {"steps": 1}})


def _step_gradient(tiny_models, processor, spec, stream, tmp_path) -> tuple[dict, dict]:
    from model.modeling import MavorsForConditionalGeneration
    from trainers.metrics import MetricsLogger, read_metrics
    from trainers.module import TrainModule
    from trainers.stage import init_distributed
    from two_rank_worker import capture_full_gradient

    init_distributed("cpu")
    torch.manual_seed(0)
    module = TrainModule(MavorsForConditionalGeneration.from_pretrained(tiny_models["mavors"]), spec, world_size=1)
    grads: dict = {}
    capture_full_gradient(module, grads)
    metrics = MetricsLogger(tmp_path / f"{spec.batch.mode}.jsonl", module)
    metrics.on_start(0)
    metrics.on_step(1, module.train_step(iter(stream)))
    return grads, read_metrics(tmp_path / f"{spec.batch.mode}.jsonl")[0]


def test_packed_step_gradient_equals_the_unpacked_one(tiny_models, processor, tmp_path):
    encoded = {s: processor.encode(conversation(s), SAMPLES[s][3], name=s) for step in STEP for s in step}
    plain = [{"sample_id": ids, "skipped": [], **processor.collate([encoded[s] for s in ids])} for ids in STEP]
    units = [{"sample_id": ids, "skipped": [], "samples": [encoded[s] for s in ids]} for ids in STEP]
    want, want_record = _step_gradient(tiny_models, processor, _spec(tiny_models), plain, tmp_path)
    lengths = {s: e["input_ids"].shape[0] for s, e in encoded.items()}
    budget = lengths["video"] + 11  # three rows: more micro-batches than the 2 accumulation steps
    assert lengths["two-images"] + lengths["image"] > budget >= lengths["two-images"] + lengths["text-short"]
    batches = BudgetStream(iter([]), 2, "packed", budget, processor.collate).step_batches(units)
    assert [b["sample_id"] for b in batches] == [["video"], ["two-images", "text-short"], ["image"]]
    got, record = _step_gradient(tiny_models, processor, _spec(tiny_models, mode="packed", max_tokens=budget),
                                 batches, tmp_path)
    assert got.keys() == want.keys() and len(want) > 50
    total = torch.cat([w.flatten() for w in want.values()]).norm()
    for name, w in want.items():
        assert (got[name] - w).norm() <= 1e-5 * max(w.norm(), 1e-3 * total), name
    visual = sum(int(torch.isin(e["input_ids"], torch.tensor([processor.image_token_id, processor.video_token_id]))
                     .sum()) for e in encoded.values())
    assert record["visual_tokens_per_rank"] == want_record["visual_tokens_per_rank"] == [visual]
    assert record["vision_imbalance"] == 1.0 and (record["micro_batches"], want_record["micro_batches"]) == (3, 2)
    assert record["loss"] == pytest.approx(want_record["loss"], rel=1e-5)
    assert record["tokens"] == want_record["tokens"]  # real tokens in both (no padding counted)
    assert record["padded_fraction"] == 0.0
    plain_positions = sum(b["input_ids"].numel() for b in plain)
    assert want_record["padded_fraction"] == pytest.approx(1 - record["tokens"] / plain_positions)
    assert want_record["padded_fraction"] > 0.1
