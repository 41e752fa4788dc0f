"""DAPO's soft overlong punishment (``overlong``): a length penalty that ramps up inside a buffer before the limit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def overlong_reward(
    completions: Sequence[Any],
    completion_ids: Sequence[Sequence[int]],
    max_completion_length: int,
    overlong_buffer: int,
    **kwargs: Any,
) -> list[float]:
    """Soft overlong punishment (DAPO, Yu et al. 2025, arXiv 2503.14476, §3.4, eq. 13), per completion.

    With ``L_max = max_completion_length``, ``L_cache = overlong_buffer`` and ``|y|`` the completion's token count::

        R(y) = 0                                   if |y| <= L_max - L_cache
             = ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
             = -1                                  if |y| > L_max

    Added to the correctness reward, it tells the policy that running into the limit is bad without punishing a
    correct answer that is merely long as hard as a wrong one (DAPO: ``L_max`` 20480 with a 4096 buffer). Pass
    the generation limit as ``max_completion_length`` so the ramp ends where truncation begins.

    Args:
        completions: completion texts (unused; the length is counted in tokens).
        completion_ids: token ids of each completion, as the rollout passes them.
        max_completion_length: ``L_max``, tokens.
        overlong_buffer: ``L_cache``, tokens, in ``(0, L_max]``.
        **kwargs: dataset columns (ignored).

    >>> overlong_reward(["a"] * 4, [[0] * 6, [0] * 8, [0] * 10, [0] * 11], max_completion_length=10, overlong_buffer=4)
    [0.0, -0.5, -1.0, -1.0]
    """
    if not 0 < overlong_buffer <= max_completion_length:
        raise ValueError(
            f"overlong_buffer must be in (0, max_completion_length={max_completion_length}], got {overlong_buffer}"
        )
    start = max_completion_length - overlong_buffer  # the ramp begins after this many tokens
    rewards = []
    for ids in completion_ids:
        length = len(ids)
        if length <= start:
            rewards.append(0.0)
        elif length <= max_completion_length:
            rewards.append((start - length) / overlong_buffer)
        else:
            rewards.append(-1.0)
    return rewards
