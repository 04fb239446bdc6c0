"""Plain-text measures of the caption scorers: coverage and repetition, over :func:`core.text.words`
(the words the QA and caption length rules count, and the evaluation metrics too).

Answer normalization and whole-word matching are :func:`core.text.normalize_answer` /
``contains_answer``, which the evaluation metrics use too, so a DPO "correct" and an eval
"correct" are the same test.

    python -c "from curation.preference.text import coverage; print(coverage('a red circle', 'A red circle.'))"
"""
from __future__ import annotations

from core.text import words

# Function words that say nothing about the content of a caption.
STOPWORDS = frozenset(
    "a an the and or but of in on at to with from by for as is are was were be been being it its this that "
    "these those there here what which who whom how then than so such into onto over under while also very "
    "has have had do does did can could will would shall should may might must i you he she we they them "
    "his her their our your my me him us not no yes".split()
)


def content_words(text: str) -> set[str]:
    return {w for w in words(text) if w not in STOPWORDS}


def coverage(candidate: str, reference: str) -> float:
    """Share of the reference's content words that the candidate mentions (0 when the reference has none)."""
    ref = content_words(reference)
    return len(ref & content_words(candidate)) / len(ref) if ref else 0.0


def repetition(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one: 0 for varied text, near 1 for a loop."""
    w = words(text)
    grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0
