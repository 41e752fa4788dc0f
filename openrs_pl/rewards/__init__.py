"""Reward functions for GRPO: the Open-RS rewards, user ``module:function`` rewards, and their weighted sum.

Modules: :mod:`~openrs_pl.rewards.grading` (math-verify grading in a timeout-safe process pool, shared with
evaluation), :mod:`~openrs_pl.rewards.correctness` (``accuracy``, ``cosine``, ``length``; the cosine quirk and the
gold-field choice are documented there), :mod:`~openrs_pl.rewards.formatting` (``format``, ``format_strict``,
``tag_count``), :mod:`~openrs_pl.rewards.repetition`, :mod:`~openrs_pl.rewards.reward_set` (specs, validation,
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
