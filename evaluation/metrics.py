"""Metric functions for the held-out tasks, chosen to show what the DPO stage is meant to fix:
QA answers that are correct but too brief, and captions that do not terminate.

All functions are pure and work on plain strings, so the lmms-eval task utilities
(`manifests/eval/tasks/utils.py`) and the tests share them; answer normalisation and whole-word
matching live in :mod:`core.text`, which the DPO judges use too.
"""
from __future__ import annotations

from core.text import normalize_answer, words

TRUNCATION_MARK = "<|truncated|>"
"""Appended by the Mavors lmms-eval model (``mark_truncated=true``) to outputs cut by the token limit,
so termination can be measured; the task utilities strip it before scoring."""

def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised prediction equals the normalised reference."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def is_too_brief(prediction: str, min_words: int) -> float:
    """1.0 when the answer has fewer than ``min_words`` words (the Stage-2 symptom DPO targets)."""
    return float(len(words(prediction)) < min_words)


def lcs_length(a: list[str], b: list[str]) -> int:
    """Longest common subsequence of two token lists (dynamic programming, O(len(a)·len(b)))."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (beta = 1) over normalised word tokens; 0.0 when either side is empty."""
    p, r = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not p or not r:
        return 0.0
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def split_truncation(output: str) -> tuple[str, bool]:
    """(text without the truncation mark, whether the output was cut by the token limit)."""
    if output.endswith(TRUNCATION_MARK):
        return output[: -len(TRUNCATION_MARK)], True
    return output, False
