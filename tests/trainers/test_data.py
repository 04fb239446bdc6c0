"""The training loader: coverage per epoch, rank split, exact mid-epoch resume, answer-only labels, DPO pairs.

    pytest tests/trainers/test_data.py -q
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from curation.preference.records import prompt_turns, shard_record
from curation.shards.format import sample_record
from curation.shards.writer import write_records
from trainers.data import build_loader, iter_pairs_once

N_PER_SHARD = [5, 3, 7, 4, 6, 2, 5]  # 32 samples in 7 shards of uneven size


class ByteProcessor:
    """A trivial processor written for this test: UTF-8 bytes as token ids, answers labelled, media sizes kept."""

    pad_token_id = 0

    def encode(self, conversation, media, *, name):
        ids, labels = [], []
        for turn in conversation:
            text = list(turn["value"].encode()) + [10]
            ids += text
            labels += text if turn["from"] == "gpt" else [-100] * len(text)
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.ones(len(ids), dtype=torch.long),
                "labels": torch.tensor(labels), "media_bytes": torch.tensor([len(m) for m in media] or [0])}

    def collate(self, samples):
        width = max(len(s["input_ids"]) for s in samples)

        def pad(key, fill):
            return torch.stack([torch.cat([s[key], s[key].new_full((width - len(s[key]),), fill)]) for s in samples])

        return {"input_ids": pad("input_ids", 0), "attention_mask": pad("attention_mask", 0),
                "labels": pad("labels", -100), "media_bytes": torch.cat([s["media_bytes"] for s in samples])}


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 20 + i % 5, 3), i * 7 % 255, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory):
    """Seven shards as the mixture build writes them (sample JSON + one image each)."""
    root = tmp_path_factory.mktemp("loader") / "s2"
    n = 0
    for shard, count in enumerate(N_PER_SHARD):
        recs = []
        for _ in range(count):
            sid = f"src/{n:03d}"
            recs.append(sample_record(sid, {
                "sample_id": sid, "conversation": [{"from": "human", "value": f"<image>\nWhat is {n}?"},
                                                   {"from": "gpt", "value": f"It is {n}."}]},
                [(_png(n), "png", {"kind": "image"})]))
            n += 1
        # one write_records call per shard keeps the uneven sizes; one index lists them all
        write_records(recs, root / f"part{shard}", prefix=f"p{shard}", max_samples=100, max_bytes=1 << 20)
    return root.parent


def ids_of(loader, n_batches=None):
    out = []
    for i, batch in enumerate(loader):
        out.append(batch["sample_id"])
        if n_batches is not None and i + 1 == n_batches:
            break
    return out


def test_every_sample_once_per_epoch_and_seeded_order(shard_root):
    loader = build_loader(shard_root, ByteProcessor(), micro_size=4, seed=3, shuffle_buffer=8, max_epochs=2)
    batches = ids_of(loader)
    assert [len(b) for b in batches] == [4] * 8 + [4] * 8  # 32 samples, two epochs
    epoch0 = [s for b in batches[:8] for s in b]
    epoch1 = [s for b in batches[8:] for s in b]
    assert sorted(epoch0) == sorted(epoch1) == [f"src/{i:03d}" for i in range(32)]
    assert epoch0 != epoch1  # reshuffled per epoch
    again = build_loader(shard_root, ByteProcessor(), micro_size=4, seed=3, shuffle_buffer=8, max_epochs=2)
    assert ids_of(again) == batches
    other = build_loader(shard_root, ByteProcessor(), micro_size=4, seed=4, shuffle_buffer=8, max_epochs=1)
    assert ids_of(other) != batches[:8]


def test_collated_labels_are_answers_only(shard_root):
    batch = next(iter(build_loader(shard_root, ByteProcessor(), micro_size=3, shuffle_buffer=1)))
    for row, sid in enumerate(batch["sample_id"]):
        n = int(sid.split("/")[1])
        labels = batch["labels"][row]
        answer = bytes(labels[labels != -100].tolist()).decode()
        assert answer == f"It is {n}.\n"
        assert batch["attention_mask"][row].sum() == len(f"<image>\nWhat is {n}?\nIt is {n}.\n")
        assert batch["media_bytes"][row] == len(_png(n))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_yields_exactly_the_rest(shard_root, workers):
    def make():
        return build_loader(shard_root, ByteProcessor(), micro_size=3, seed=11, shuffle_buffer=6,
                            num_workers=workers, max_epochs=2)

    full = ids_of(make())
    assert sorted(s for b in full for s in b) == sorted([f"src/{i:03d}" for i in range(32)] * 2)
    for k in (4, 11):  # mid-epoch 0, and around the end of epoch 0 (workers' last batches are short)
        first = make()
        head = ids_of(first, k)
        state = first.state_dict()
        resumed = make()
        resumed.load_state_dict(state)
        assert head == full[:k] and ids_of(resumed) == full[k:], (k, state)


def test_ranks_split_disjoint_and_equal(shard_root):
    per_rank, steps = [], []
    for rank in (0, 1):
        loader = build_loader(shard_root, ByteProcessor(), micro_size=2, rank=rank, world_size=2, seed=5,
                              shuffle_buffer=4, num_workers=2, max_epochs=1)
        batches = ids_of(loader)
        per_rank.append([s for b in batches for s in b])
        plan = loader.epoch_plan(0)
        steps.append(len(batches))
        assert len(batches) == plan.steps == loader.steps_per_epoch(0)
        assert len(per_rank[-1]) + plan.dropped == sum(plan.counts)
    assert steps[0] == steps[1] and min(map(len, per_rank)) >= 14  # balanced split of 32 in shards of 2..7
    assert not set(per_rank[0]) & set(per_rank[1])


def test_loader_with_the_mavors_processor(shard_root):
    """Wired to the model area's processor: labels are the answer tokens (+ <|im_end|>) and nothing else."""
    from model.processing import MavorsProcessor
    from demo.tiny_models import make_tokenizer

    tok = make_tokenizer()
    proc = MavorsProcessor(tok, frames_per_chunk=4, patch_size=16, image_size=64, max_sub_images=4)
    batch = next(iter(build_loader(shard_root, proc, micro_size=2, shuffle_buffer=1)))
    grids = batch["chunk_grids"]  # (N chunks, 2): one tubelet row per patch of every chunk
    assert batch["pixel_values"].shape[0] == int((grids[:, 0] * grids[:, 1]).sum()) > 0
    for row, sid in enumerate(batch["sample_id"]):
        labels = batch["labels"][row]
        assert tok.decode(labels[labels != -100]) == f"It is {int(sid.split('/')[1])}.<|im_end|>"


def test_dpo_records_and_pairs_once(tmp_path):
    """Pair shards as the DPO area writes them (curation.preference.records.shard_record from dpo_pairs rows):
    the same record format, read without conversion; labels are each side's answer, media in placeholder order."""
    media = []
    for i in range(5):
        (tmp_path / f"m{i}.png").write_bytes(_png(i))
        (tmp_path / f"m{i}.mp4").write_bytes(b"video bytes " * (i + 1))
        media.append([str(tmp_path / f"m{i}.mp4"), str(tmp_path / f"m{i}.png")])
    rows = [{"pair_id": f"set/s{i}/0", "pair_set_id": "set", "sample_id": f"s{i}", "domain": "qa",
             "prompt": prompt_turns(f"Describe {i}", ["video", "image"]), "chosen": f"A long answer {i}.",
             "rejected": "No.", "chosen_score": 1.0, "rejected_score": 0.0, "margin": 1.0, "chosen_reason": "c",
             "rejected_reason": "r", "judge": "j", "checkpoint_sha256": "ck", "rejected_media_path": None,
             "temperatures": {"chosen": 0.7, "rejected": 1.5}, "seeds": {"chosen": 1, "rejected": 2},
             "media_kinds": ["video", "image"], "media_paths": media[i], "media_hashes": [f"v{i}", f"i{i}"]}
            for i in range(5)]
    write_records([shard_record(r) for r in rows], tmp_path / "pairs", prefix="pairs", max_samples=2,
                  max_bytes=1 << 20)
    loader = build_loader(tmp_path / "pairs", ByteProcessor(), micro_size=2, dpo=True, shuffle_buffer=1,
                          max_epochs=1)
    batches = list(loader)
    assert sorted(s for b in batches for s in b["sample_id"]) == [f"set/s{i}/0" for i in range(5)]
    for b in batches:
        for row, sid in enumerate(b["sample_id"]):
            i = int(sid.split("/")[1][1:])
            for side, text in (("chosen", f"A long answer {i}.\n"), ("rejected", "No.\n")):
                labels, ids = b[side]["labels"][row], b[side]["input_ids"][row]
                assert bytes(labels[labels != -100].tolist()).decode() == text
                prompt = f"<video>\n<image>\nDescribe {i}\n"
                assert bytes(ids[:len(prompt.encode())].tolist()).decode() == prompt
            # ByteProcessor records media sizes in order: the video first, as its placeholder comes first
            sizes = b["chosen"]["media_bytes"].view(-1, 2)[row].tolist()
            assert sizes == [len(b"video bytes " * (i + 1)), len(_png(i))]
    seen = [s for r in (0, 1) for b in iter_pairs_once(tmp_path / "pairs", ByteProcessor(), micro_size=2, rank=r,
                                                        world_size=2) for s in b["sample_id"]]
    assert sorted(seen) == [f"set/s{i}/0" for i in range(5)]

    class RefusingFirstVideo(ByteProcessor):
        def encode(self, conversation, media, *, name):
            from model.preprocessing import MediaError

            if media[0] == b"video bytes ":  # pair s0's video
                raise MediaError("undecodable_video", f"{name}: not a video")
            return super().encode(conversation, media, name=name)

    scored = [s for b in iter_pairs_once(tmp_path / "pairs", RefusingFirstVideo(), micro_size=2) for s in
              b["sample_id"]]
    assert sorted(scored) == [f"set/s{i}/0" for i in range(1, 5)]  # the refused pair is left out, not fatal


class NarrowRefusingProcessor(ByteProcessor):
    """ByteProcessor that refuses images 20 px wide (samples n % 5 == 0) as the Mavors processor refuses media."""

    def encode(self, conversation, media, *, name):
        from model.preprocessing import MediaError

        if any(Image.open(io.BytesIO(m)).width == 20 for m in media):
            raise MediaError("image_too_small", f"{name}: 20 px wide")
        return super().encode(conversation, media, name=name)


def test_refused_samples_are_skipped_counted_and_keep_the_plan(shard_root):
    def make(proc, workers=2):
        return build_loader(shard_root, proc, micro_size=3, seed=11, shuffle_buffer=6, num_workers=workers,
                            max_epochs=2)

    full = ids_of(make(ByteProcessor()))
    loader = make(NarrowRefusingProcessor())
    batches = list(loader)
    refused = {f"src/{i:03d}" for i in range(0, 32, 5)}
    assert len(batches) == len(full)  # same step count: a refusal never shortens or ends the epoch
    assert [b["sample_id"] for b in batches] == [[s for s in b if s not in refused] for b in full]
    assert [sorted(s["sample_id"] for s in b["skipped"]) for b in batches] == \
        [sorted(s for s in b if s in refused) for b in full]
    assert sorted(s["sample_id"] for s in loader.skipped) == sorted(list(refused) * 2)
    assert {s["reason"] for s in loader.skipped} == {"image_too_small"}
    first = make(NarrowRefusingProcessor())
    head = ids_of(first, 5)
    resumed = make(NarrowRefusingProcessor())
    resumed.load_state_dict(first.state_dict())
    assert head + ids_of(resumed) == [b["sample_id"] for b in batches]
