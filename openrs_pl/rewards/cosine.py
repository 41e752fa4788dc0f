"""The cosine length-scaled correctness reward of Open-RS Exp 3 (``get_cosine_scaled_reward`` in open-r1).

As the recipe actually ran it (open-r1's factory called with the ``GRPOScriptArguments`` defaults, Exp 3 adding
``--cosine_max_len 3584``): ``progress = length / max_len`` with the length in *characters* and *not clipped*,
so the curve is periodic (a completion of ``2 * max_len`` characters scores like an empty one); then
``reward = lo + 0.5 * (hi - lo) * (1 + cos(pi * progress))`` with ``(lo, hi) = (min_value_correct,
max_value_correct)`` for a correct answer and ``(max_value_wrong, min_value_wrong)`` for a wrong one. The script
defaults ``min_value_wrong=0.0, max_value_wrong=-0.5, min_value_correct=0.5, max_value_correct=1.0`` make a
wrong answer score 0.0 when short and -0.5 at ``max_len``, i.e. *long wrong answers are penalised more* — the
reverse of the cosine reward's intent (Yeo et al. 2025, and the function's own defaults, ``min_value_wrong=-1.0``:
a short wrong answer scores -1.0 and a long one -0.5, to encourage thinking longer when wrong). The defaults
below reproduce the recipe; ``min_value_wrong=-1.0`` restores the intent, ``length_unit="tokens"`` (needs
``completion_ids``) measures what ``max_len`` usually means, and ``clip=True`` stops the curve at ``max_len``.

Correctness is graded as in :mod:`openrs_pl.rewards.correctness` (gold from ``solution`` by default; an unparsable
gold gives 1.0, unscaled, as in the recipe, or None with ``on_unparsable_gold="skip"``). The recipe did not catch
exceptions in ``verify`` here (one would have crashed the step); a grading error or timeout counts as a wrong answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from openrs_pl.rewards.completion_text import completion_texts
from openrs_pl.rewards.correctness import (
    GoldField,
    LengthUnit,
    OnUnparsableGold,
    check_on_unparsable,
    completion_lengths,
    grade_completions,
    unparsable_value,
)


def cosine_scaled(
    correct: bool,
    length: int,
    max_len: int,
    min_value_wrong: float,
    max_value_wrong: float,
    min_value_correct: float,
    max_value_correct: float,
    clip: bool = False,
) -> float:
    """The cosine schedule for one completion (recipe formula; ``clip`` caps progress at 1).

    >>> cosine_scaled(True, 0, 100, 0.0, -0.5, 0.5, 1.0), cosine_scaled(True, 100, 100, 0.0, -0.5, 0.5, 1.0)
    (1.0, 0.5)
    >>> round(cosine_scaled(False, 200, 100, 0.0, -0.5, 0.5, 1.0), 9)  # unclipped: periodic, back to the start
    0.0
    """
    progress = length / max_len
    if clip:
        progress = min(progress, 1.0)
    lo, hi = (min_value_correct, max_value_correct) if correct else (max_value_wrong, min_value_wrong)
    return lo + 0.5 * (hi - lo) * (1.0 + math.cos(math.pi * progress))


def cosine_reward(
    completions: Sequence[Any],
    max_len: int = 1000,
    min_value_wrong: float = 0.0,
    max_value_wrong: float = -0.5,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
    length_unit: LengthUnit = "chars",
    clip: bool = False,
    gold_field: GoldField = "solution",
    on_unparsable_gold: OnUnparsableGold = "reward_one",
    timeout_s: float = 5.0,
    completion_ids: Sequence[Sequence[int]] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """Open-RS Exp 3 cosine reward: correctness scaled by completion length (defaults = the recipe's script).

    Args:
        completions: completion texts or chat messages.
        max_len: length of half a cosine period (recipe default 1000; Exp 3 used 3584).
        min_value_wrong: reward of an empty wrong completion (recipe script 0.0; intent -1.0).
        max_value_wrong: reward of a wrong completion at ``max_len``.
        min_value_correct: reward of a correct completion at ``max_len``.
        max_value_correct: reward of an empty correct completion.
        length_unit: ``"chars"`` (recipe) or ``"tokens"`` (counts ``completion_ids``).
        clip: cap the progress at 1 (the recipe does not: its curve is periodic).
        gold_field: gold column (see :func:`accuracy_reward`).
        on_unparsable_gold: ``"reward_one"`` (recipe: 1.0, unscaled) or ``"skip"`` (None).
        timeout_s: wall-clock limit per completion; a timeout or error counts as wrong.
        completion_ids: token ids per completion (passed by RewardSet / TRL).
        **kwargs: dataset columns, including ``gold_field``.

    >>> rewards = cosine_reward(["\\\\boxed{2}", "\\\\boxed{3}"], max_len=18, solution=["\\\\boxed{2}"] * 2)
    >>> [round(r, 6) for r in rewards]  # 9 of 18 characters: halfway down both curves
    [0.75, -0.25]
    """
    check_on_unparsable(on_unparsable_gold)
    lengths = completion_lengths(completions, length_unit, completion_ids)
    verdicts = grade_completions(completion_texts(completions), kwargs, gold_field, timeout_s)
    bounds = (min_value_wrong, max_value_wrong, min_value_correct, max_value_correct)
    return [
        cosine_scaled(v.correct, n, max_len, *bounds, clip=clip) if v.gold_ok else unparsable_value(on_unparsable_gold)
        for v, n in zip(verdicts, lengths, strict=True)
    ]
