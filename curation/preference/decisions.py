"""What a DPO build decides for one input: its candidates (each accepted or refused, with a reason) and pairs.

These records are what the catalog stores (``dpo_candidates``, ``dpo_pairs``,
``dpo_inputs``) and what the shards carry; the domain modules only fill them in.
Reasons are short countable codes; ``detail`` carries the human-readable rest.

    python -c "from curation.preference.decisions import DpoInput; help(DpoInput)"
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

from inference import Completion

Domain = Literal["qa", "image_caption", "video_caption"]
DOMAINS: tuple[Domain, ...] = ("qa", "image_caption", "video_caption")
# Candidate status: used as chosen/rejected, valid but not used (more candidates than pairs), or refused.
# ``pending`` only lives in memory until a domain decides; the catalog refuses it.
Status = Literal["pending", "chosen", "rejected", "valid_unused", "refused"]


@dataclass(frozen=True)
class DpoInput:
    """One catalog sample as a DPO input: the question (placeholders removed), its reference, its media."""

    sample_id: str
    domain: Domain
    question: str
    reference: str
    media: list[tuple[str, str]]
    """[("image"|"video", local path)] in conversation order."""
    media_hashes: list[str]

    def prompt_content(self, text: str | None = None) -> list[dict[str, Any]]:
        """Engine message content: the media parts, then the question (or ``text``)."""
        parts: list[dict[str, Any]] = [{"type": kind, kind: path} for kind, path in self.media]
        return parts + [{"type": "text", "text": self.question if text is None else text}]


@dataclass
class Candidate:
    """One generation and the decision about it."""

    candidate_id: str
    """Unique within the input: ``<pool>-<index>``."""
    pool: str
    """Which call made it: ``positive``/``negative`` (QA), ``sample`` (image captions), ``original``/``shuffled``."""
    text: str
    finish_reason: str
    n_tokens: int
    temperature: float
    seed: int
    status: Status = "pending"
    reason: str = ""
    """Why it was accepted or refused (countable code)."""
    detail: str = ""
    score: float | None = None
    """Ranking score (image captions) or None."""
    scores: dict[str, float] = field(default_factory=dict)
    """Per-term scores, judge verdicts."""
    judge: str | None = None

    @classmethod
    def from_completion(cls, pool: str, index: int, completion: Completion, temperature: float,
                        seed: int) -> Candidate:
        return cls(candidate_id=f"{pool}-{index}", pool=pool, text=completion.text,
                   finish_reason=completion.finish_reason, n_tokens=completion.n_tokens,
                   temperature=temperature, seed=seed)

    @property
    def is_empty(self) -> bool:
        return not self.text.strip()

    def refuse(self, reason: str, detail: str = "") -> None:
        self.status, self.reason, self.detail = "refused", reason, detail

    def accept(self, reason: str) -> None:
        self.status, self.reason = "valid_unused", reason


@dataclass(frozen=True)
class Pair:
    chosen: Candidate
    rejected: Candidate

    @property
    def margin(self) -> float | None:
        if self.chosen.score is None or self.rejected.score is None:
            return None
        return self.chosen.score - self.rejected.score


@dataclass
class Outcome:
    """The decision for one input: pairs (possibly none), every candidate, and the input-level reason."""

    input: DpoInput
    candidates: list[Candidate] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    reason: str = "paired"
    """``paired`` or why no pair was made (``video_too_short``, ``judge_failed``, ``no_valid_positive``, ...)."""
    detail: str = ""
    audit_path: str | None = None
    """Artifact kept for audit (the shuffled video)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Domain provenance (the shuffle permutation, segment bounds)."""

    def take(self, pairs: list[Pair]) -> None:
        """Record ``pairs`` as this input's result and mark their candidates chosen/rejected."""
        self.pairs = pairs
        for pair in pairs:
            pair.chosen.status, pair.rejected.status = "chosen", "rejected"

    def no_pair(self, reason: str, detail: str = "") -> Outcome:
        self.pairs, self.reason, self.detail = [], reason, detail
        return self


def derive_seed(seed: int, *parts: str) -> int:
    """A 31-bit seed from a base seed and names (sample id, pool): stable across runs and machines."""
    digest = hashlib.sha256("\x00".join([str(seed), *parts]).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
