"""Judges: is an answer correct against its reference, and how good is a caption.

Pluggable: anything with ``name`` and ``judge(items) -> list[Verdict]`` (or
``rate(items) -> list[Rating]``) can serve. Shipped:

* :class:`NormalizedMatchJudge`: short references ("red", "3", "left"): correct when the
  normalized reference occurs as whole words in the normalized answer.
* :class:`ModelJudge`: a judge model through the engine interface. ``generate`` mode parses
  the judge's words ("yes"/"no", a 1..K rating); ``logprob`` mode compares the judge's
  log-probabilities of the allowed answers (always decides; expected rating for scores).
* :class:`RoutedJudge`: short references to the match judge, the rest to the model judge.

A judge that cannot decide returns a failed verdict (``correct is None``) with the reason
in ``detail``; callers then make no pair for that candidate and record why.

    python -c "from curation.preference.judges import *; print(NormalizedMatchJudge().judge([JudgeItem('q','red','It is red.')]))"
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from inference import ChatRequest, Engine, SamplingParams
from curation.preference.config import JudgeConfig
from core.text import contains_answer, normalize_answer

Media = list[tuple[str, str]]  # [("image"|"video", path)]


@dataclass(frozen=True)
class JudgeItem:
    """One answer to judge against a reference."""

    question: str
    reference: str
    answer: str
    media: Media = field(default_factory=list)


@dataclass(frozen=True)
class Verdict:
    """``correct`` is None when the judge failed; ``detail`` then says why."""

    correct: bool | None
    judge: str
    detail: str = ""


@dataclass(frozen=True)
class RateItem:
    """One caption to rate; ``reference`` may be empty."""

    instruction: str
    caption: str
    reference: str = ""
    media: Media = field(default_factory=list)


@dataclass(frozen=True)
class Rating:
    """``score`` in [0, 1], or None when the judge failed (``detail`` says why)."""

    score: float | None
    judge: str
    detail: str = ""


class AnswerJudge(Protocol):
    name: str

    def judge(self, items: list[JudgeItem]) -> list[Verdict]: ...


class NormalizedMatchJudge:
    """Correct when the normalized reference appears as consecutive whole words in the normalized answer."""

    name = "normalized_match"

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        out = []
        for item in items:
            if not normalize_answer(item.reference):
                out.append(Verdict(None, self.name, "reference is empty after normalization"))
            else:
                out.append(Verdict(bool(contains_answer(item.answer, item.reference)), self.name))
        return out


_CORRECTNESS_PROMPT = (
    "You grade answers. Question: {question}\nReference answer: {reference}\nCandidate answer: {answer}\n"
    "Does the candidate answer agree with the reference answer? Reply with one word: yes or no."
)
_RATING_PROMPT = (
    "You grade image and video captions for accuracy, detail and fluency. Instruction: {instruction}\n"
    "{reference}Caption: {caption}\nRate the caption from 1 (poor) to {k} (excellent). Reply with one number."
)
_FIRST_WORD = re.compile(r"[a-z]+")
_FIRST_INT = re.compile(r"\d+")


class ModelJudge:
    """A judge model behind the engine interface (``generate`` or ``logprob`` mode, see module doc)."""

    def __init__(self, engine: Engine, config: JudgeConfig, name: str | None = None):
        self.engine = engine
        self.config = config
        self.name = name or f"model:{config.mode}:{getattr(engine.config, 'model_path', '?')}"

    # -- correctness -----------------------------------------------------------------
    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        prompts = [_CORRECTNESS_PROMPT.format(question=i.question, reference=i.reference, answer=i.answer)
                   for i in items]
        requests = [ChatRequest(f"judge-{k}", [{"role": "user", "content": p}]) for k, p in enumerate(prompts)]
        if self.config.mode == "logprob":
            return [Verdict(None, self.name, sums) if isinstance(sums, str) else Verdict(sums[0] > sums[1], self.name)
                    for sums in self._option_logprobs(requests, ["yes", "no"])]
        out = []
        for text, failure in self._generate(requests):
            if text is None:
                out.append(Verdict(None, self.name, failure))
                continue
            m = _FIRST_WORD.search(text.lower())
            word = m.group(0) if m else ""
            out.append(Verdict(word == "yes", self.name) if word in ("yes", "no")
                       else Verdict(None, self.name, f"unparseable verdict {text[:60]!r}"))
        return out

    # -- ratings ---------------------------------------------------------------------
    def rate(self, items: list[RateItem]) -> list[Rating]:
        k = self.config.rating_scale
        requests = []
        for n, item in enumerate(items):
            ref = f"Reference caption: {item.reference}\n" if item.reference.strip() else ""
            text = _RATING_PROMPT.format(instruction=item.instruction, reference=ref, caption=item.caption, k=k)
            requests.append(ChatRequest(f"rate-{n}", [{"role": "user", "content": self._content(text, item.media)}]))
        if self.config.mode == "logprob":
            expected = self._expected_rating(requests, k)
            return [Rating(None, self.name, e) if isinstance(e, str) else Rating((e - 1) / (k - 1), self.name)
                    for e in expected]
        out = []
        for text, failure in self._generate(requests):
            if text is None:
                out.append(Rating(None, self.name, failure))
                continue
            m = _FIRST_INT.search(text)
            value = int(m.group(0)) if m else None
            out.append(Rating((value - 1) / (k - 1), self.name) if value is not None and 1 <= value <= k
                       else Rating(None, self.name, f"unparseable rating {text[:60]!r}"))
        return out

    # -- plumbing --------------------------------------------------------------------
    def _content(self, text: str, media: Media) -> str | list[dict[str, Any]]:
        accepted = set(getattr(self.engine.config, "modalities", ["text"]))
        parts = [{"type": kind, kind: path} for kind, path in media if self.config.see_media and kind in accepted]
        return parts + [{"type": "text", "text": text}] if parts else text

    def _generate(self, requests: list[ChatRequest]) -> list[tuple[str | None, str]]:
        """Greedy reply per request as (text, ""), or (None, why) when the judge call failed."""
        try:
            results = self.engine.generate(requests, SamplingParams(temperature=0.0, max_tokens=self.config.max_tokens))
        except Exception as e:  # noqa: BLE001 - a judge failure is a recorded reason, not a crash
            return [(None, f"judge call failed: {type(e).__name__}: {e}")] * len(requests)
        return [(r.completions[0].text.strip(), "") if r.completions else (None, "judge returned nothing")
                for r in results]

    def _option_logprobs(self, requests: list[ChatRequest], options: list[str]) -> list[list[float] | str]:
        """Summed log-prob of each option as the judge's reply, per request; a failure gives a reason string."""
        scored = [ChatRequest(f"{r.request_id}-{o}", r.messages + [{"role": "assistant", "content": o}])
                  for r in requests for o in options]
        try:
            scores = self.engine.score(scored, score_roles=("assistant",))
        except Exception as e:  # noqa: BLE001
            return [f"judge scoring failed: {type(e).__name__}: {e}"] * len(requests)
        out: list[list[float] | str] = []
        for i in range(len(requests)):
            sums = []
            for s in scores[i * len(options):(i + 1) * len(options)]:
                lps = [lp for lp, m in zip(s.logprobs, s.mask) if m]
                sums.append(sum(lps) if lps and all(math.isfinite(x) for x in lps) else math.nan)
            out.append(sums if all(math.isfinite(x) for x in sums) else "judge log-probs are not finite")
        return out

    def _expected_rating(self, requests: list[ChatRequest], k: int) -> list[float | str]:
        out: list[float | str] = []
        for sums in self._option_logprobs(requests, [str(v) for v in range(1, k + 1)]):
            if isinstance(sums, str):
                out.append(sums)
                continue
            top = max(sums)
            weights = [math.exp(s - top) for s in sums]  # softmax over the K allowed replies
            out.append(sum((v + 1) * w for v, w in enumerate(weights)) / sum(weights))
        return out


class RoutedJudge:
    """Short references → normalized match; open-ended ones → the model judge (failure when there is none)."""

    def __init__(self, model: ModelJudge | None, short_reference_words: int):
        self.match = NormalizedMatchJudge()
        self.model = model
        self.short_reference_words = short_reference_words
        self.name = f"routed({self.match.name}|{model.name if model else 'none'})"

    def is_short(self, reference: str) -> bool:
        return len(normalize_answer(reference).split()) <= self.short_reference_words

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        out: list[Verdict | None] = [None] * len(items)
        short = [i for i, it in enumerate(items) if self.is_short(it.reference)]
        long_ = [i for i, it in enumerate(items) if not self.is_short(it.reference)]
        for i, v in zip(short, self.match.judge([items[i] for i in short])):
            out[i] = v
        if long_ and self.model is None:
            for i in long_:
                out[i] = Verdict(None, "none", "judge_unavailable: open-ended reference and no judge model")
        elif long_:
            for i, v in zip(long_, self.model.judge([items[i] for i in long_])):
                out[i] = v
        return out  # type: ignore[return-value]
