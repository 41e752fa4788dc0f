"""Reward functions for GRPO: the Open-RS rewards, user ``module:function`` rewards, and their weighted sum.

Grading itself (math-verify in a timeout-safe process pool, shared with evaluation) is :mod:`openrs_pl.grading`.
Modules: :mod:`~openrs_pl.rewards.correctness` (``accuracy``,

``length``; the ``gold_field`` choice), :mod:`~openrs_pl.rewards.cosine` (Exp 3's cosine reward: the recipe's
quirks vs the reward's intent), :mod:`~openrs_pl.rewards.formatting` (``format``, ``format_strict``,
``tag_count``), :mod:`~openrs_pl.rewards.repetition`, :mod:`~openrs_pl.rewards.overlong` (DAPO's soft overlong
punishment), :mod:`~openrs_pl.rewards.reward_set` (specs, validation,
:class:`RewardSet`).
"""

from openrs_pl.rewards.reward_set import (
    REWARD_REGISTRY,
    RewardResult,
    RewardSet,
    RewardSpec,
    resolve_reward,
    validate_reward_specs,
)

__all__ = ["REWARD_REGISTRY", "RewardResult", "RewardSet", "RewardSpec", "resolve_reward", "validate_reward_specs"]
