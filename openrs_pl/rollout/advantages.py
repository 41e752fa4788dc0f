"""Group-relative advantages: the rollout side turns each group's rewards into the loss's per-completion weight."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

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
