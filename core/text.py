"""Words and answers of a text, one definition for everything that counts or compares them (DPO length rules,
coverage and answer judging, evaluation metrics, the lmms-eval task utilities).

A word is a run of letters or digits; an apostrophe inside a word joins it ("It's red." is 2 words:
``it's``, ``red``); other punctuation separates (``state-of-the-art`` is 4).

    python -c "from core.text import words; print(words(\"It's red.\"))"
"""
from __future__ import annotations

import re
import string

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


def words(text: str) -> list[str]:
    """The lowercase words of ``text``, in order."""
    return _WORD.findall(text.lower())


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def contains_answer(prediction: str, reference: str) -> float:
    """1.0 when the normalised reference appears as whole words in the normalised prediction
    (long answers that state the short reference count as correct)."""
    ref, pred = normalize_answer(reference), normalize_answer(prediction)
    return float(bool(ref) and re.search(rf"(^| ){re.escape(ref)}( |$)", pred) is not None)
