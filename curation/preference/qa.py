"""Open-ended QA pairs (paper App. A 1): a correct, well-sized, terminated answer vs an incorrect or too brief one.

Positive candidates come from low-temperature sampling, negative candidates from a
higher temperature on the same input. A positive must be judged correct, have
``min_words..max_words`` words and end by EOS (``finish_reason == "stop"``): a correct
answer cut by the token limit is not a positive. A negative must be judged incorrect,
or be too brief (``<= brief_words`` words; a one-word answer is a valid negative even
when right, since brevity is the Stage-2 fault DPO fixes).

    from curation.preference.qa import decide_qa
    outcome = decide_qa(inp, positive_completions, negative_completions, judge, QAConfig(), seeds=(1, 2))
"""
from __future__ import annotations

from inference import Completion
from curation.preference.config import QAConfig
from curation.preference.decisions import Candidate, DpoInput, Outcome, Pair
from curation.preference.judges import AnswerJudge, JudgeItem
from core.text import words


def decide_qa(inp: DpoInput, positives: list[Completion], negatives: list[Completion], judge: AnswerJudge,
              config: QAConfig, seeds: tuple[int, int]) -> Outcome:
    """Judge every candidate, keep the valid positives and negatives, pair them up to ``max_pairs``."""
    cands = ([Candidate.from_completion("positive", i, c, config.positive.temperature, seeds[0])
              for i, c in enumerate(positives)]
             + [Candidate.from_completion("negative", i, c, config.negative.temperature, seeds[1])
                for i, c in enumerate(negatives)])
    outcome = Outcome(inp, cands)
    for c in cands:
        if c.is_empty:
            c.refuse("empty_generation")
    to_judge = [c for c in cands if not c.is_empty]
    verdicts = judge.judge([JudgeItem(inp.question, inp.reference, c.text, inp.media) for c in to_judge])
    for c, v in zip(to_judge, verdicts):
        c.judge = v.judge
        if v.correct is not None:
            c.scores["correct"] = float(v.correct)
        n_words = len(words(c.text))
        if c.pool == "positive":
            _decide_positive(c, v.correct, v.detail, n_words, config)
        else:
            _decide_negative(c, v.correct, v.detail, n_words, config)

    good = [c for c in cands if c.pool == "positive" and c.status == "valid_unused"]
    bad = [c for c in cands if c.pool == "negative" and c.status == "valid_unused"]
    if good and bad:
        outcome.take([Pair(p, n) for p, n in zip(good, bad)][:config.max_pairs])
        return outcome
    if all(c.is_empty for c in cands):
        return outcome.no_pair("empty_generations", f"all {len(cands)} generations empty")
    missing = "positive" if not good else "negative"
    pool = [c for c in cands if c.pool == missing]
    if any(c.reason == "judge_failed" for c in pool):
        failed = next(c for c in pool if c.reason == "judge_failed")
        return outcome.no_pair("judge_failed", f"no valid {missing}: {failed.detail}")
    counts: dict[str, int] = {}
    for c in pool:
        counts[c.reason] = counts.get(c.reason, 0) + 1
    return outcome.no_pair(f"no_valid_{missing}", ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))


def _decide_positive(c: Candidate, correct: bool | None, detail: str, n_words: int, config: QAConfig) -> None:
    if correct is None:
        c.refuse("judge_failed", detail)
    elif not correct:
        c.refuse("incorrect")
    elif c.finish_reason != "stop":
        c.refuse("not_terminated", f"finish_reason={c.finish_reason} after {c.n_tokens} tokens")
    elif n_words < config.min_words:
        c.refuse("too_short", f"{n_words} words < {config.min_words}")
    elif n_words > config.max_words:
        c.refuse("too_long", f"{n_words} words > {config.max_words}")
    else:
        c.accept("correct_terminated")


def _decide_negative(c: Candidate, correct: bool | None, detail: str, n_words: int, config: QAConfig) -> None:
    if n_words <= config.brief_words:
        c.accept("too_brief")
    elif correct is None:
        c.refuse("judge_failed", detail)
    elif not correct:
        c.accept("incorrect")
    else:
        c.refuse("correct_not_brief")
