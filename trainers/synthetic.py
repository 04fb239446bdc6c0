"""Random training data with a resumable, rank-sharded order (smoke tests, benchmarks, demos).

    stream = SyntheticStream(spec.data.synthetic, vocab_size=1024, micro_size=2, rank=0, world_size=1,
                             seed=0, dpo=False, processor=None)
    batch = next(iter(stream))   # {"sample_id", "input_ids" (B, T), "attention_mask", "labels", ...}

Without a processor a sample is random token ids (any causal LM). With a Mavors
processor it is a conversation about a random image (``image_px`` square) whose
words are drawn at random, encoded and collated by the processor, so the whole
model (IVE → IFA → projector → LLM) sees it.

The global sample order is a seeded permutation per epoch. Rank r's m-th micro-batch
holds global positions ``m*world*micro + r*micro + [0, micro)``, so an optimizer step
(accumulation × world × micro = global batch) covers one contiguous slice of the order
and the state to resume is a single counter.
"""
from __future__ import annotations

from typing import Iterator

import torch

from trainers.losses import IGNORE_INDEX
from trainers.spec import SyntheticData


class SyntheticStream:
    """Deterministic random conversations; with ``dpo`` each sample is a (chosen, rejected) pair."""

    def __init__(self, cfg: SyntheticData, vocab_size: int, micro_size: int, rank: int, world_size: int,
                 seed: int, dpo: bool = False, low_token: int = 16, processor=None, deferred: bool = False):
        self.cfg, self.vocab_size, self.micro_size, self.processor = cfg, vocab_size, micro_size, processor
        self.deferred = deferred  # yield {"sample_id", "samples"} unpadded, for trainers.packing.BudgetStream
        self.rank, self.world_size, self.seed, self.dpo = rank, world_size, seed, dpo
        self.low_token = min(low_token, vocab_size - 1)  # keep clear of special tokens at the start of the vocab
        self.micro_batches_done = 0

    def state_dict(self) -> dict:
        return {"micro_batches_done": self.micro_batches_done}

    def load_state_dict(self, state: dict) -> None:
        self.micro_batches_done = int(state["micro_batches_done"])

    def sample_index(self, position: int) -> int:
        """Which of the ``n_samples`` samples sits at global ``position`` of the stream."""
        n = self.cfg.n_samples
        epoch, offset = divmod(position, n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return int(torch.randperm(n, generator=g)[offset])

    def _tokens(self, index: int, salt: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 7919 + index * 2 + salt)
        return torch.randint(self.low_token, self.vocab_size, (self.cfg.seq_len,), generator=g)  # (T,)

    def _sequence(self, index: int, salt: int) -> dict[str, torch.Tensor]:
        if self.processor is not None:
            return self._conversation(index, salt)
        ids = self._tokens(index, 0)
        if salt:  # rejected answer: same prompt, different answer tokens
            ids[-self.cfg.answer_len:] = self._tokens(index, salt)[-self.cfg.answer_len:]
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[-self.cfg.answer_len:] = ids[-self.cfg.answer_len:]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    def _conversation(self, index: int, salt: int) -> dict[str, torch.Tensor]:
        """Image + question + answer through the processor (prompt words from salt 0, answer from ``salt``)."""
        g = torch.Generator().manual_seed(self.seed * 7919 + index * 2)
        px = self.cfg.image_px
        image = torch.randint(0, 256, (px, px, 3), generator=g, dtype=torch.uint8).numpy()  # (H, W, 3)
        words = [WORDS[i] for i in self._tokens(index, 0) % len(WORDS)]
        answer = [WORDS[i] for i in self._tokens(index, salt) % len(WORDS)][-self.cfg.answer_len:]
        conversation = [{"from": "human", "value": "<image>\n" + " ".join(words[:-self.cfg.answer_len])},
                        {"from": "gpt", "value": " ".join(answer)}]
        return self.processor.encode(conversation, [image], name=f"synthetic/{index}")

    def sample(self, index: int) -> dict:
        """One sample by index: token tensors (T,), or ``{"chosen", "rejected"}`` for DPO."""
        if self.dpo:
            return {"sample_id": f"synthetic/{index}", "chosen": self._sequence(index, 0),
                    "rejected": self._sequence(index, 1)}
        return {"sample_id": f"synthetic/{index}", **self._sequence(index, 0)}

    def __iter__(self) -> Iterator[dict]:
        while True:
            start = self.micro_batches_done * self.world_size * self.micro_size + self.rank * self.micro_size
            samples = [self.sample(self.sample_index(start + j)) for j in range(self.micro_size)]
            self.micro_batches_done += 1
            yield self.collate(samples)

    def collate_samples(self, samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Sample tensors -> a batch: the processor's padding collate, or stacking for equal-length token samples."""
        return self.processor.collate(samples) if self.processor is not None else stack_tensors(samples)

    def collate(self, samples: list[dict]) -> dict:
        """A micro-batch (``deferred``: the unpadded samples under ``samples``)."""
        out: dict = {"sample_id": [s["sample_id"] for s in samples]}
        if self.dpo:
            for side in ("chosen", "rejected"):
                out[side] = self.collate_samples([s[side] for s in samples])
            return out
        tensors = [{k: v for k, v in s.items() if k != "sample_id"} for s in samples]
        return {**out, **({"samples": tensors} if self.deferred else self.collate_samples(tensors))}


def stack_tensors(samples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack equal-length samples' tensors: (T,) each → (B, T)."""
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


# Word list of the processor path (English-like words the tiny BPE tokenizer knows).
WORDS = ("a the and of in on with video image shows red green blue circle square moving left right up down "
         "small large fast slow first then one two three object scene camera light dark bright").split()
