"""Format rewards: Open-RS ``format`` and ``tag_count``, and open-r1's stricter ``format_strict``.

The DeepSeek-R1-Distill chat template's generation prompt already ends in ``<think>\\n``, so a completion starts
inside the reasoning block. Open-RS therefore only checks that the block is closed exactly once
(``\\n</think>\\n``); open-r1's regex expects the completion itself to open with ``<think>``, which such a
completion never does unless the prefill is put back with ``prefix="<think>\\n"``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from openrs_pl.rewards.completion_text import completion_texts

_THINK_OPEN = "<think>\n"
_THINK_CLOSE = "\n</think>\n"
_STRICT_FORMAT = re.compile(r"^<think>\n.*?\n</think>\n<answer>\n.*?\n</answer>$", re.DOTALL | re.MULTILINE)


def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """Open-RS format reward: 1.0 iff ``"\\n</think>\\n"`` occurs exactly once, else 0.0.

    >>> format_reward(["reasoning\\n</think>\\nThe answer is 3.", "no close tag", "a\\n</think>\\nb\\n</think>\\n"])
    [1.0, 0.0, 0.0]
    """
    return [1.0 if text.count(_THINK_CLOSE) == 1 else 0.0 for text in completion_texts(completions)]


def format_strict_reward(completions: Sequence[Any], prefix: str = "", **kwargs: Any) -> list[float]:
    """open-r1's format reward: ``<think>\\n…\\n</think>\\n<answer>\\n…\\n</answer>`` (regex match) -> 1.0.

    Args:
        completions: completion texts or chat messages.
        prefix: text prepended before matching, e.g. ``"<think>\\n"`` when the chat template pre-fills it.
        **kwargs: dataset columns (ignored).

    >>> done = "x\\n</think>\\n<answer>\\n3\\n</answer>"
    >>> format_strict_reward(["<think>\\n" + done, done])
    [1.0, 0.0]
    >>> format_strict_reward([done], prefix="<think>\\n")
    [1.0]
    """
    return [1.0 if _STRICT_FORMAT.match(prefix + text) else 0.0 for text in completion_texts(completions)]


def tag_count_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """Open-RS tag count: +0.5 if ``"<think>\\n"`` occurs exactly once, +0.5 if ``"\\n</think>\\n"`` does.

    >>> tag_count_reward(["<think>\\nx\\n</think>\\ny", "x\\n</think>\\ny", "x"])
    [1.0, 0.5, 0.0]
    """
    return [
        0.5 * (text.count(_THINK_OPEN) == 1) + 0.5 * (text.count(_THINK_CLOSE) == 1)
        for text in completion_texts(completions)
    ]
