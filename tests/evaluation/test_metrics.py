"""Metric functions against values worked by hand."""
from __future__ import annotations

import pytest

from core.text import contains_answer
from evaluation.metrics import TRUNCATION_MARK, exact_match, is_too_brief, lcs_length, rouge_l, split_truncation


@pytest.mark.parametrize("pred, ref, em, contains", [
    ("Red.", "red", 1.0, 1.0),
    ("The circle is red.", "red", 0.0, 1.0),
    ("reddish", "red", 0.0, 0.0),          # whole words only
    ("three", "3", 0.0, 0.0),
    ("", "red", 0.0, 0.0),
])
def test_exact_match_and_contains(pred, ref, em, contains):
    assert exact_match(pred, ref) == em
    assert contains_answer(pred, ref) == contains


def test_rouge_l_worked_example():
    # normalised: pred "cat sat on mat" (4), ref "cat is on mat" (4); LCS = cat on mat = 3
    # P = R = 3/4 -> F1 = 0.75
    assert rouge_l("The cat sat on the mat.", "A cat is on the mat") == pytest.approx(0.75)
    # pred "blue square moves left quickly" (5) vs ref "square moves left" (3): LCS 3, P 3/5, R 1 -> 2*.6/1.6
    assert rouge_l("blue square moves left quickly", "square moves left") == pytest.approx(2 * 0.6 / 1.6)
    assert rouge_l("", "x") == 0.0 and rouge_l("a b", "c d") == 0.0
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # textbook example (CLRS 15.4)


def test_brevity_and_truncation():
    assert is_too_brief("Red.", 3) == 1.0 and is_too_brief("It is red.", 3) == 0.0
    assert is_too_brief("It's red.", 3) == 1.0  # 2 words: the apostrophe joins "it's"
    assert is_too_brief("It's a red ball - round.", 5) == 0.0  # 5 words: a lone dash is not one
    assert split_truncation("a long caption" + TRUNCATION_MARK) == ("a long caption", True)
    assert split_truncation("done.") == ("done.", False)
