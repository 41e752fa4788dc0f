"""Group-relative advantages: the rollout side turns each group's rewards into the loss's per-completion weight."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

MultiObjectiveAggregation = Literal["sum_then_normalize", "normalize_then_sum"]
"""How several reward functions become one advantage: TRL 1.16's ``multi_objective_aggregation``."""
ScaleRewards = Literal["group", "batch", "none"]


def group_advantages(rewards: Tensor, num_generations: int, scale: ScaleRewards = "group", eps: float = 1e-4) -> Tensor:
    """Group-relative advantages ``A_i = (r_i - mean_group(r)) / (std + eps)`` (DeepSeekMath §4.1.2, as TRL).

    ``scale`` picks the std: ``"group"`` the unbiased std of the G rewards of the prompt (the recipe), ``"batch"``
    the unbiased std of all of ``rewards`` (pass the gathered global batch to match TRL), ``"none"`` no division
    at all (Dr. GRPO, arXiv 2503.20783). Rewards are centred after subtracting the group's first element, so a
    group of equal rewards gets exactly zero advantage and zero std (never NaN, never rounding noise).

    Args:
        rewards: ``[N]`` scalar reward per completion, the G completions of a prompt consecutive.
        num_generations: G, at least 2 (the std of one sample is undefined).
        scale: Which std divides the centred rewards.
        eps: Added to the std.

    Returns:
        ``[N]`` advantages.

    >>> import torch
    >>> group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5]), num_generations=2, scale="none")
    tensor([ 0.5000, -0.5000,  0.0000,  0.0000])
    """
    if num_generations < 2 or rewards.dim() != 1 or rewards.numel() % num_generations:
        raise ValueError(
            f"need 1-D rewards in whole groups of num_generations >= 2, got shape {tuple(rewards.shape)} "
            f"and num_generations={num_generations}"
        )
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    grouped = rewards.view(-1, num_generations)  # [M, G]
    shifted = grouped - grouped[:, :1]  # [M, G], exactly 0 for an all-equal group (std is shift-invariant)
    centered = (shifted - shifted.mean(dim=1, keepdim=True)).flatten()  # [N]
    if scale == "none":
        return centered
    if scale == "group":
        std = shifted.std(dim=1, keepdim=True).expand_as(shifted).flatten()  # [N]
    else:
        std = (rewards - rewards[0]).std()  # []
    return centered / (std + eps)  # [N]


def gdpo_advantages(per_func: Tensor, weights: Tensor, num_generations: int, eps: float = 1e-4) -> Tensor:
    """GDPO (arXiv 2601.05242) ``normalize_then_sum``: normalise each reward in its group, sum, renormalise.

    ``z_ik = (r_ik - mean_g(r_k)) / (std_g(r_k) + eps)`` per reward function ``k`` within the group ``g``,
    ``s_i = sum_k w_k z_ik``, ``A_i = (s_i - mean(s)) / (std(s) + eps)`` over the batch (unbiased stds). Each
    reward keeps its own resolution instead of a large-range reward drowning a small one. TRL 1.16's
    ``multi_objective_aggregation="normalize_then_sum"`` (it then ignores ``scale_rewards``).

    Args:
        per_func: ``[N, K]`` rewards, the G completions of a prompt consecutive. weights: ``[K]``.

    NaN rewards (a function returned None) are left out of the statistics and add 0 to the sum, as TRL's
    ``nanmean``/``nansum``.

    >>> import torch
    >>> gdpo_advantages(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([1.0, 1.0]), 2)  # z = +-0.5/(0.7071+eps)
    tensor([ 0.7070, -0.7070])
    """
    grouped = per_func.view(-1, num_generations, per_func.size(-1))  # [M, G, K]
    z = (grouped - grouped.nanmean(1, keepdim=True)) / (_nanstd(grouped, 1) + eps)  # [M, G, K]
    summed = (z.reshape(per_func.shape) * weights.to(per_func.dtype)).nansum(-1)  # [N]
    return (summed - summed.mean()) / (summed.std() + eps)


def _nanstd(x: Tensor, dim: int) -> Tensor:
    """Unbiased std along ``dim`` ignoring NaNs (keepdim)."""
    mean = x.nanmean(dim, keepdim=True)
    count = (~x.isnan()).sum(dim, keepdim=True)
    return ((x - mean) ** 2).nanmean(dim, keepdim=True).mul(count / (count - 1)).sqrt()
