"""core.text (words, answer normalisation) against results worked by hand."""
from __future__ import annotations

import pytest

from core.text import normalize_answer, words


@pytest.mark.parametrize("text, expected", [
    ("It's red.", ["it's", "red"]),                     # an apostrophe inside a word does not split it
    ("The dog’s ball isn't here", ["the", "dog’s", "ball", "isn't", "here"]),  # typographic apostrophe too
    ("A red circle.", ["a", "red", "circle"]),
    ("state-of-the-art, 3 km", ["state", "of", "the", "art", "3", "km"]),
    ("'quoted' -- ... !", ["quoted"]),                   # quotes and lone punctuation are not words
    ("Café AU lait", ["café", "au", "lait"]),
    ("", []),
])
def test_words(text, expected):
    assert words(text) == expected


def test_normalization_drops_case_punctuation_and_articles():
    assert normalize_answer("  The Red, circle!  ") == "red circle"
    assert normalize_answer("An apple a day") == "apple day"
