"""Plain-text measures shared by the judges and caption scorers: normalization, word counts, coverage, repetition.

    python -c "from curation.preference.text import normalize; print(normalize('The  Red circle!'))"
"""
from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})
_WORD = re.compile(r"[a-z0-9]+")
# Function words that say nothing about the content of a caption.
STOPWORDS = frozenset(
    "a an the and or but of in on at to with from by for as is are was were be been being it its this that "
    "these those there here what which who whom how then than so such into onto over under while also very "
    "has have had do does did can could will would shall should may might must i you he she we they them "
    "his her their our your my me him us not no yes".split()
)


def normalize(text: str) -> str:
    """SQuAD-style answer normalization: lowercase, punctuation and articles removed, whitespace collapsed."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def words(text: str) -> list[str]:
    """Lowercase alphanumeric words."""
    return _WORD.findall(text.lower())


def contains_phrase(answer: str, reference: str) -> bool:
    """True when the normalized reference occurs as whole consecutive words in the normalized answer."""
    ref, ans = normalize(reference).split(), normalize(answer).split()
    if not ref:
        return False
    return any(ans[i:i + len(ref)] == ref for i in range(len(ans) - len(ref) + 1))


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
