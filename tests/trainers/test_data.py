"""The training loader: coverage per epoch, one global order for any world size and worker count, exact resume
(also on another world size), weighted blends and their migration, answer-only labels, DPO pairs.

    pytest tests/trainers/test_data.py -q
"""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from curation.preference.records import prompt_turns, shard_record
from curation.shards.format import sample_record
from curation.shards.writer import write_records
from trainers.data import Source, build_loader, iter_pairs_once

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
    loader = build_loader(shard_root, ByteProcessor(), micro_size=4, seed=3, shuffle_window=8, slice_size=2,
                          max_epochs=2)
    batches = ids_of(loader)
    assert [len(b) for b in batches] == [4] * 8 + [4] * 8  # 32 samples, two epochs
    epoch0 = [s for b in batches[:8] for s in b]
    epoch1 = [s for b in batches[8:] for s in b]
    assert sorted(epoch0) == sorted(epoch1) == [f"src/{i:03d}" for i in range(32)]
    assert epoch0 != epoch1  # reshuffled per epoch
    again = build_loader(shard_root, ByteProcessor(), micro_size=4, seed=3, shuffle_window=8, slice_size=2,
                         max_epochs=2)
    assert ids_of(again) == batches
    other = build_loader(shard_root, ByteProcessor(), micro_size=4, seed=4, shuffle_window=8, slice_size=2,
                         max_epochs=1)
    assert ids_of(other) != batches[:8]


def test_collated_labels_are_answers_only(shard_root):
    batch = next(iter(build_loader(shard_root, ByteProcessor(), micro_size=3, shuffle_window=1)))
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
        return build_loader(shard_root, ByteProcessor(), micro_size=3, seed=11, shuffle_window=6, slice_size=3,
                            num_workers=workers, max_epochs=2)

    full = ids_of(make())
    assert sorted(s for b in full for s in b) == sorted([f"src/{i:03d}" for i in range(32)] * 2)
    assert [len(b) for b in full] == [3] * 21 + [1]  # 64 positions; a micro-batch may straddle two epochs
    for k in (4, 11):  # mid-epoch 0, and the batch that straddles epochs 0 and 1
        first = make()
        head = ids_of(first, k)
        state = first.state_dict()
        resumed = make()
        resumed.load_state_dict(state)
        assert head == full[:k] and ids_of(resumed) == full[k:], (k, state)


def global_order(root, n, **kw):
    """The first ``n`` sample ids of the global order: one rank, micro-batches of one sample."""
    return [b[0] for b in ids_of(build_loader(root, ByteProcessor(), micro_size=1, **kw), n)]


ORDER = {"seed": 5, "shuffle_window": 5, "slice_size": 2}


@pytest.mark.parametrize("world,micro,workers", [(2, 2, 0), (2, 2, 2), (3, 2, 1), (4, 3, 2)])
def test_ranks_take_strided_positions_of_one_global_order(shard_root, world, micro, workers):
    """Rank r's m-th micro-batch is positions m*micro*W + r + k*W (k < micro) of the world-size-1 order, for any
    world size and worker count: ranks are disjoint, and a round of W micro-batches is one contiguous block."""
    rounds = 6
    g = global_order(shard_root, rounds * micro * world, **ORDER)
    for rank in range(world):
        got = ids_of(build_loader(shard_root, ByteProcessor(), micro_size=micro, rank=rank, world_size=world,
                                  num_workers=workers, **ORDER), rounds)
        assert got == [[g[m * micro * world + rank + k * world] for k in range(micro)] for m in range(rounds)]


@pytest.mark.parametrize("before,after", [((2, 2), (1, 2)), ((2, 2), (1, 4)), ((1, 4), (2, 2)), ((2, 2), (4, 1))])
def test_resume_on_another_world_size_continues_the_global_order(shard_root, before, after):
    """2 ranks x micro 2 x 2 accumulation = global batch 8: stop after 3 steps (5 rounds: into epoch 1), resume
    the state on another world size and micro size; the consumed ids are the global order, nothing lost or
    repeated. The state is the same on every rank, small and JSON."""
    (w0, m0), (w1, m1) = before, after
    steps, global_size, total = 5, 8, 10
    g = global_order(shard_root, total * global_size, **ORDER)
    loaders = [build_loader(shard_root, ByteProcessor(), micro_size=m0, rank=r, world_size=w0, num_workers=1,
                            **ORDER) for r in range(w0)]
    per_step = global_size // (m0 * w0)
    heads = [ids_of(ld, steps * per_step) for ld in loaders]
    states = [ld.state_dict() for ld in loaders]
    assert all(s == states[0] for s in states) and len(json.dumps(states[0])) < 400
    assert states[0]["position"] == steps * global_size
    assert states[0]["sources"]["shards"]["epoch"] == 1  # 40 positions of 32 samples
    resumed = []
    for r in range(w1):
        ld = build_loader(shard_root, ByteProcessor(), micro_size=m1, rank=r, world_size=w1, **ORDER)
        ld.load_state_dict(json.loads(json.dumps(states[0])))
        resumed.append(ids_of(ld, (total - steps) * global_size // (m1 * w1)))

    def by_step(per_rank, micro, world):  # the samples of each step, every rank's, as a set
        n = global_size // (micro * world)
        return [sorted(s for r in per_rank for b in r[i * n:(i + 1) * n] for s in b)
                for i in range(len(per_rank[0]) // n)]

    consumed = by_step(heads, m0, w0) + by_step(resumed, m1, w1)
    assert consumed == [sorted(g[i * global_size:(i + 1) * global_size]) for i in range(total)]


@pytest.fixture(scope="module")
def replay_root(tmp_path_factory):
    """A second, small shard set (5 samples in 2 shards): the replay share of a blend."""
    root = tmp_path_factory.mktemp("replay")
    recs = [sample_record(f"rep/{i}", {"sample_id": f"rep/{i}", "conversation": [
        {"from": "human", "value": f"<image>\nOld {i}?"}, {"from": "gpt", "value": f"Old {i}."}]},
        [(_png(i), "png", {"kind": "image"})]) for i in range(5)]
    write_records(recs, root / "r", prefix="r", max_samples=3, max_bytes=1 << 20)
    return root


def blend(shard_root, replay_root, main=3.0, replay=1.0):
    return [Source.from_root("main", shard_root, main), Source.from_root("replay", replay_root, replay)]


def test_blend_shares_follow_the_weights_and_each_source_runs_its_own_epochs(shard_root, replay_root):
    n = 80
    ids = global_order(blend(shard_root, replay_root), n, **ORDER)
    is_replay = [s.startswith("rep/") for s in ids]
    for k in range(1, n + 1):  # every prefix: the replay share within one sample of 1/4
        assert abs(sum(is_replay[:k]) - k / 4) <= 1, k
    replay = [s for s in ids if s.startswith("rep/")]
    main = [s for s in ids if s.startswith("src/")]
    assert len(replay) == 20 and len(main) == 60
    for e in range(4):  # the replay set went through 4 epochs: each a permutation of its 5 samples
        assert sorted(replay[5 * e:5 * e + 5]) == [f"rep/{i}" for i in range(5)]
    assert sorted(main[:32]) == [f"src/{i:03d}" for i in range(32)]  # main: one whole epoch, then epoch 1
    assert len(set(main[32:])) == 28
    assert replay[:5] != replay[5:10]  # reshuffled per epoch


@pytest.mark.parametrize("workers", [0, 2])
def test_blend_resumes_exactly_mid_way(shard_root, replay_root, workers):
    def make():
        return build_loader(blend(shard_root, replay_root), ByteProcessor(), micro_size=3, num_workers=workers,
                            **ORDER)

    full = ids_of(make(), 20)
    first = make()
    head = ids_of(first, 7)
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    assert head + ids_of(resumed, 13) == full


def test_changed_blend_migrates_cursors_and_a_changed_set_is_refused(shard_root, replay_root, tmp_path):
    """Resume with the replay weight raised: each source continues at its cursor (no sample of a source's epoch
    twice, none skipped) and the new weights hold from there; a source dropped from the blend is simply not
    read; a set whose shards changed under the same name is refused, naming it."""
    first = build_loader(blend(shard_root, replay_root), ByteProcessor(), micro_size=4, **ORDER)
    head = [s for b in ids_of(first, 5) for s in b]  # 20 positions: 15 main, 5 replay (one whole replay epoch)
    state = first.state_dict()
    assert state["sources"]["main"]["cursor"] == 15 and state["sources"]["replay"] == {**state["sources"]["replay"],
                                                                                        "epoch": 1, "cursor": 0}
    changed = build_loader(blend(shard_root, replay_root, main=1.0, replay=1.0), ByteProcessor(), micro_size=4,
                           **ORDER)
    changed.load_state_dict(state)
    tail = [s for b in ids_of(changed, 5) for s in b]
    main_order = [s for s in global_order([Source.from_root("main", shard_root)], 32, **ORDER)]
    assert [s for s in head + tail if s.startswith("src/")] == main_order[:25]
    assert sum(s.startswith("rep/") for s in tail) == 10  # 1:1 from the resume on
    alone = build_loader([Source.from_root("main", shard_root)], ByteProcessor(), micro_size=5, **ORDER)
    alone.load_state_dict(state)
    assert [s for b in ids_of(alone, 2) for s in b] == main_order[15:25]
    write_records([sample_record("rep/x", {"sample_id": "rep/x", "conversation": []}, [])], tmp_path / "x",
                  prefix="x", max_samples=1, max_bytes=1 << 20)
    other = build_loader([Source.from_root("main", shard_root), Source.from_root("replay", tmp_path / "x")],
                         ByteProcessor(), micro_size=4, **ORDER)
    with pytest.raises(ValueError, match="source 'replay' now lists other shards"):
        other.load_state_dict(state)


def test_loader_with_the_mavors_processor(shard_root):
    """Wired to the model area's processor: labels are the answer tokens (+ <|im_end|>) and nothing else."""
    from model.processing import MavorsProcessor
    from demo.tiny_models import make_tokenizer

    tok = make_tokenizer()
    proc = MavorsProcessor(tok, frames_per_chunk=4, patch_size=16, image_size=64, max_sub_images=4)
    batch = next(iter(build_loader(shard_root, proc, micro_size=2, shuffle_window=1)))
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
    loader = build_loader(tmp_path / "pairs", ByteProcessor(), micro_size=2, dpo=True, shuffle_window=1,
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
        return build_loader(shard_root, proc, micro_size=3, seed=11, shuffle_window=6, num_workers=workers,
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


def test_blend_in_the_stage_spec(shard_root, replay_root, tmp_path):
    """``data.blend`` -> the loader's sources (name: the given one, else the shards text; weights as written);
    duplicate names and DPO blends are refused when the spec loads."""
    from conftest import toy_spec

    from core.config import ConfigError
    from trainers.batches import data_dirs, data_sources

    spec = toy_spec(data={"blend": [{"shards": str(shard_root), "weight": 0.9, "name": "stage2"},
                                    {"shards": str(replay_root), "weight": 0.1}]})
    sources = data_sources(spec, tmp_path)
    assert [(s.name, s.weight, s.n_samples) for s in sources] == [("stage2", 0.9, 32), (str(replay_root), 0.1, 5)]
    assert data_dirs(spec, tmp_path) == [shard_root, replay_root]
    with pytest.raises((ConfigError, ValueError), match="distinct names"):
        toy_spec(data={"blend": [{"shards": "a", "weight": 1}, {"shards": "b", "weight": 1, "name": "a"}]})
    with pytest.raises((ConfigError, ValueError), match="data.blend is for next-token stages"):
        toy_spec(data={"blend": [{"shards": "a", "weight": 1}]}, loss={"kind": "dpo", "beta": 0.1})
