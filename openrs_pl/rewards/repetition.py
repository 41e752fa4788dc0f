"""The n-gram repetition penalty of open-r1 / Open-RS (``repetition_penalty``; not used in the three experiments)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from openrs_pl.rewards.completion_text import completion_texts


def ngram_repetition(text: str, ngram_size: int) -> float:
    """Fraction of repeated word n-grams: ``1 - unique / total`` over lower-cased whitespace-split words.

    >>> ngram_repetition("a b c a b c", 3)  # n-grams abc, bca, cab, abc: 3 unique of 4
    0.25
    >>> ngram_repetition("too short", 3)
    0.0
    """
    words = text.lower().split()
    if len(words) < ngram_size:
        return 0.0
    ngrams = [tuple(words[i : i + ngram_size]) for i in range(len(words) - ngram_size + 1)]
    return 1.0 - len(set(ngrams)) / len(ngrams)


def repetition_reward(
    completions: Sequence[Any], ngram_size: int = 3, max_penalty: float = -1.0, **kwargs: Any
) -> list[float]:
    """Repetition penalty: ``ngram_repetition(text, ngram_size) * max_penalty`` (0 for empty or short text).

    Args:
        completions: completion texts or chat messages.
        ngram_size: n of the word n-grams (recipe default 3).
        max_penalty: the reward of a completion made of one repeated n-gram; must be <= 0 (recipe default -1.0).
        **kwargs: dataset columns (ignored).

    >>> repetition_reward(["a b c a b c", "all words differ here"])
    [-0.25, -0.0]
    """
    if max_penalty > 0:
        raise ValueError(f"max_penalty {max_penalty} should not be positive")
    return [ngram_repetition(text, ngram_size) * max_penalty for text in completion_texts(completions)]
