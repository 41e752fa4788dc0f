"""Rewards built on answer correctness: ``accuracy`` and ``length`` (Kimi 1.5), and their shared grading step.

Gold answers (``gold_field``): the recipe parses the gold from the dataset's full worked ``solution`` (first
match of ``LatexExtractionConfig()``, typically the solution's ``\\boxed{}``), which is the default here
(``gold_field="solution"``). ``gold_field="answer"`` parses the short ``answer`` column instead (``gold_mode=
"latex"`` of :mod:`openrs_pl.rewards.grading`); it is more robust when a solution boxes an intermediate result
or nothing at all. A gold that does not parse is logged and counted (``gold_unparsed``) and scored as
``on_unparsable_gold`` says: ``"reward_one"`` (the recipe: every completion gets 1.0, so the group has zero
advantage) or ``"skip"`` (``None``: the function does not apply, and the sample's weighted sum leaves it out).

Grading runs in :func:`openrs_pl.rewards.grading.grade_batch` with a per-completion wall-clock limit
``timeout_s``; a timeout or an exception counts as a wrong answer (accuracy 0.0) and is counted (``timeouts``,
``errors``).

The cosine reward (Open-RS Exp 3) and its recipe quirks are in :mod:`openrs_pl.rewards.cosine`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

from openrs_pl.rewards.completion_text import completion_texts
from openrs_pl.rewards.counters import count
from openrs_pl.rewards.grading import GoldMode, Verdict, grade_batch

logger = logging.getLogger(__name__)

GoldField = Literal["answer", "solution"]
OnUnparsableGold = Literal["reward_one", "skip"]
LengthUnit = Literal["chars", "tokens"]


def grade_completions(
    texts: Sequence[str],
    columns: dict[str, Any],
    gold_field: GoldField,
    timeout_s: float,
) -> list[Verdict]:
    """Grade completion texts against the gold column ``gold_field`` and count unparsed golds/timeouts/errors.

    Raises:
        ValueError: the gold column is missing or ``gold_field`` is unknown.
    """
    if gold_field not in ("answer", "solution"):
        raise ValueError(f"gold_field must be 'answer' or 'solution', got {gold_field!r}")
    golds = columns.get(gold_field)
    if golds is None:
        raise ValueError(f"the correctness rewards need a {gold_field!r} column (gold_field={gold_field!r})")
    # A null gold (open_rs row 4303 has answer=None) is graded as an empty string, i.e. as unparsable.
    gold_texts = ["" if g is None else str(g) for g in golds]
    gold_mode: GoldMode = "solution" if gold_field == "solution" else "latex"
    verdicts = grade_batch(texts, gold_texts, gold_mode, "openrs", timeout_s=timeout_s)
    unparsed = [g for g, v in zip(gold_texts, verdicts, strict=True) if not v.gold_ok]
    if unparsed:
        example = unparsed[0][:200]
        logger.warning("%d of %d gold %ss did not parse, e.g. %r", len(unparsed), len(golds), gold_field, example)
    count("gold_unparsed", len(unparsed))
    count("timeouts", sum(v.timed_out for v in verdicts))
    count("errors", sum(v.error is not None for v in verdicts))
    return verdicts


def check_on_unparsable(on_unparsable_gold: str) -> None:
    if on_unparsable_gold not in ("reward_one", "skip"):
        raise ValueError(f"on_unparsable_gold must be 'reward_one' or 'skip', got {on_unparsable_gold!r}")


def unparsable_value(on_unparsable_gold: OnUnparsableGold) -> float | None:
    return 1.0 if on_unparsable_gold == "reward_one" else None


def accuracy_reward(
    completions: Sequence[Any],
    gold_field: GoldField = "solution",
    on_unparsable_gold: OnUnparsableGold = "reward_one",
    timeout_s: float = 5.0,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 if the completion's final answer verifies against the gold, else 0.0 (see the module docstring).

    Args:
        completions: completion texts or chat messages.
        gold_field: the dataset column holding the gold (``"solution"``: full solution, as the recipe).
        on_unparsable_gold: score of every completion whose gold does not parse (``"skip"`` -> None).
        timeout_s: wall-clock limit per completion.
        **kwargs: dataset columns, including ``gold_field``.

    >>> accuracy_reward(["... so $\\\\boxed{\\\\frac{1}{2}}$", "\\\\boxed{2}"], solution=["Hence \\\\boxed{0.5}."] * 2)
    [1.0, 0.0]
    """
    check_on_unparsable(on_unparsable_gold)
    verdicts = grade_completions(completion_texts(completions), kwargs, gold_field, timeout_s)
    return [float(v.correct) if v.gold_ok else unparsable_value(on_unparsable_gold) for v in verdicts]


def completion_lengths(
    completions: Sequence[Any], length_unit: LengthUnit, completion_ids: Sequence[Sequence[int]] | None
) -> list[int]:
    """Completion lengths in characters of the text (the recipe) or in tokens (``completion_ids`` needed).

    >>> completion_lengths(["abc", "de"], "chars", None)
    [3, 2]
    >>> completion_lengths(["abc", "de"], "tokens", [[1, 2], [3]])
    [2, 1]
    """
    if length_unit == "chars":
        return [len(t) for t in completion_texts(completions)]
    if length_unit == "tokens":
        if completion_ids is None:
            raise ValueError("length_unit='tokens' needs completion_ids (token ids of each completion)")
        return [len(ids) for ids in completion_ids]
    raise ValueError(f"length_unit must be 'chars' or 'tokens', got {length_unit!r}")


def length_reward(
    completions: Sequence[Any],
    length_unit: LengthUnit = "chars",
    gold_field: GoldField = "solution",
    timeout_s: float = 5.0,
    completion_ids: Sequence[Sequence[int]] | None = None,
    **kwargs: Any,
) -> list[float]:
    """Kimi 1.5 length reward over the completions of one call (recipe ``len_reward``).

    With ``lam = 0.5 - (len - min_len) / (max_len - min_len)`` over the call's lengths: a correct completion
    gets ``lam``, a wrong one ``min(0, lam)``; all 0.0 if every length is equal. As in the recipe, a completion
    whose gold does not parse counts as correct.

    >>> length_reward(["\\\\boxed{2}", "\\\\boxed{2}xxxxxxxxxxx", "\\\\boxed{3}"], solution=["\\\\boxed{2}"] * 3)
    [0.5, -0.5, 0.0]
    """
    lengths = completion_lengths(completions, length_unit, completion_ids)
    verdicts = grade_completions(completion_texts(completions), kwargs, gold_field, timeout_s)
    shortest, longest = min(lengths, default=0), max(lengths, default=0)
    if shortest == longest:
        return [0.0] * len(lengths)
    rewards = []
    for v, n in zip(verdicts, lengths, strict=True):
        lam = 0.5 - (n - shortest) / (longest - shortest)
        rewards.append(lam if v.correct or not v.gold_ok else min(0.0, lam))
    return rewards
