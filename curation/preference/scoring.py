"""Caption scoring: a weighted sum of pluggable terms (judge rating, reference coverage, penalties).

A term maps each candidate to a value; the score is ``sum(weight * value)`` over the
configured terms (penalties carry negative weights). Terms shipped:

* ``judge``: the judge model's rating normalized to [0, 1] (a failed rating refuses the candidate);
* ``coverage``: share of the reference caption's content words the candidate mentions;
* ``non_termination``: 1 when the caption was cut by the token limit, else 0;
* ``repetition``: share of repeated word 3-grams (a looping caption scores near 1).

    from curation.preference.scoring import CaptionScorer
    CaptionScorer(config.scorers, judge).score(inputs, candidates_per_input)
"""
from __future__ import annotations

from collections.abc import Callable

from curation.preference.config import Scorer
from curation.preference.decisions import Candidate, DpoInput
from curation.preference.judges import ModelJudge, RateItem
from curation.preference.text import coverage, repetition

# Terms computed from the candidate and its input alone.
LOCAL_TERMS: dict[str, Callable[[Candidate, DpoInput], float]] = {
    "coverage": lambda c, inp: coverage(c.text, inp.reference),
    "non_termination": lambda c, inp: float(c.finish_reason != "stop"),
    "repetition": lambda c, inp: repetition(c.text),
}


class CaptionScorer:
    """Fills ``candidate.scores`` (each term) and ``candidate.score`` (the weighted sum), in one judge batch."""

    def __init__(self, terms: list[Scorer], judge: ModelJudge | None = None):
        if any(t.name == "judge" for t in terms) and judge is None:
            raise ValueError("the 'judge' scoring term needs a judge model")
        self.terms = terms
        self.judge = judge

    @property
    def name(self) -> str:
        return "+".join(f"{t.weight:g}*{t.name}" for t in self.terms)

    def score(self, inputs: list[DpoInput], candidates: list[list[Candidate]], instruction: str) -> None:
        """Score every non-refused candidate; a candidate whose judge rating fails is refused (``judge_failed``)."""
        live = [(inp, c) for inp, cs in zip(inputs, candidates) for c in cs if c.status != "refused"]
        ratings = {}
        if self.judge is not None and any(t.name == "judge" for t in self.terms):
            items = [RateItem(instruction, c.text, inp.reference, inp.media) for inp, c in live]
            ratings = {id(c): r for (_, c), r in zip(live, self.judge.rate(items))}
        for inp, c in live:
            total = 0.0
            for term in self.terms:
                if term.name == "judge":
                    rating = ratings[id(c)]
                    c.judge = rating.judge
                    if rating.score is None:
                        c.refuse("judge_failed", rating.detail)
                        break
                    value = rating.score
                else:
                    value = LOCAL_TERMS[term.name](c, inp)
                c.scores[term.name] = value
                total += term.weight * value
            else:
                c.score = total
