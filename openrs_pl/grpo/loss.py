"""The GRPO loss family as small pure functions on tensors: no model, no trainer, no Lightning.

GRPO (DeepSeekMath, arXiv 2402.03300, eq. 3) maximises, per token t of completion i in a group of G samples,

    min(r_it * A_i, clip(r_it, 1 - eps_low, 1 + eps_high) * A_i) - beta * KL_it,    r_it = pi(o_it) / pi_old(o_it)

with the group-relative advantage A_i (§4.1.2) and the k3 KL estimator (eq. 4). The functions below compute
each piece; :func:`grpo_loss` assembles them and picks one of four normalisations (``loss_type``).

Open-RS ran TRL 69ad852e, which is ``loss_type="bnpo"`` (token-level mean over each micro-batch), ``beta=0.04``,
``epsilon=0.2``, ``scale_rewards="group"``, ``num_iterations=1`` (ratio identically 1), and log-probs taken at
temperature 1 although completions were sampled at 0.7 (TRL added the temperature division later).

Shape notation: ``N`` = completions (prompts x G, the G samples of a prompt consecutive), ``L`` = padded completion
length, ``V`` = vocabulary, ``P`` = padded prompt length. ``mask`` is 1/True on valid completion tokens (up to and
including EOS) and 0/False on right padding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import Tensor

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref): ``exp(ref - logp) - (ref - logp) - 1`` (DeepSeekMath eq. 4).

    Unbiased for samples from pi, always >= 0, and 0 where the two log-probs agree.

    Args:
        logprobs: ``[N, L]`` policy log-probs (with grad).
        ref_logprobs: ``[N, L]`` frozen reference log-probs.

    Returns:
        ``[N, L]`` per-token KL estimates.

    >>> k3_kl(torch.tensor([[0.0, -1.0]]), torch.tensor([[0.0, 0.0]]))  # e - 1 - 1 at the second token
    tensor([[0.0000, 0.7183]])
    """
    delta = ref_logprobs - logprobs  # [N, L]
    return torch.exp(delta) - delta - 1  # [N, L]


def clipped_surrogate(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """PPO clipped surrogate per token (arXiv 1707.06347 eq. 7), negated to a loss, with DAPO's clip-higher.

    ``loss_t = -min(r_t * A, clip(r_t, 1 - epsilon, 1 + epsilon_high) * A)`` with ``r_t = exp(logp_t - old_t)``.
    ``epsilon_high`` > ``epsilon`` (DAPO, arXiv 2503.14476, "Clip-Higher": 0.28) lets low-probability tokens with
    positive advantage grow further. With ``old_logprobs = logprobs.detach()`` (``num_iterations == 1``) the ratio
    is 1 and the gradient is ``-A * d logp``, the plain policy gradient.

    Args:
        logprobs: ``[N, L]`` current policy log-probs (with grad).
        old_logprobs: ``[N, L]`` log-probs of the policy that sampled the batch.
        advantages: ``[N]`` one advantage per completion.
        epsilon: Lower clip range.
        epsilon_high: Upper clip range; ``None`` means ``epsilon``.

    Returns:
        ``(per_token_loss [N, L], low_clipped [N, L], high_clipped [N, L])``: the bool masks mark tokens whose
        gradient the clip removed, ``r < 1 - epsilon`` with ``A < 0`` and ``r > 1 + epsilon_high`` with ``A > 0``.
    """
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    advantages = advantages.unsqueeze(-1)  # [N, 1]
    ratio = torch.exp(logprobs - old_logprobs)  # [N, L]
    clipped_ratio = ratio.clamp(1 - epsilon, 1 + epsilon_high)  # [N, L]
    per_token_loss = -torch.min(ratio * advantages, clipped_ratio * advantages)  # [N, L]
    low_clipped = (ratio < 1 - epsilon) & (advantages < 0)  # [N, L]
    high_clipped = (ratio > 1 + epsilon_high) & (advantages > 0)  # [N, L]
    return per_token_loss, low_clipped, high_clipped


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over the positions where ``mask`` is set (0 when none is); padding values never leak.

    >>> masked_mean(torch.tensor([[1.0, 3.0, 1e30]]), torch.tensor([[1, 1, 0]]))
    tensor(2.)
    """
    mask = mask.bool()
    return torch.where(mask, values, 0).sum() / mask.sum().clamp(min=1)


def normalize_grpo(per_token: Tensor, mask: Tensor) -> Tensor:
    """``loss_type="grpo"`` (DeepSeekMath eq. 3): ``(1/N) * sum_i (sum_t m_it * l_it) / max(1, sum_t m_it)``.

    Each sequence's token mean, then the mean over the ``N`` sequences (fully masked rows count as 0). Every
    sequence weighs the same, so a token of a long completion weighs less: the length bias Dr. GRPO points out.
    """
    mask = mask.bool()
    per_sequence = torch.where(mask, per_token, 0).sum(-1) / mask.sum(-1).clamp(min=1)  # [N]
    return per_sequence.mean()


def normalize_bnpo(per_token: Tensor, mask: Tensor) -> Tensor:
    """``loss_type="bnpo"`` (the recipe): ``sum_it m_it * l_it / max(1, sum_it m_it)`` over the micro-batch.

    Every valid token of the micro-batch weighs the same; this is TRL 69ad852e's only normalisation.
    """
    return masked_mean(per_token, mask)


def normalize_dr_grpo(per_token: Tensor, mask: Tensor, max_completion_length: int) -> Tensor:
    """``loss_type="dr_grpo"`` (Dr. GRPO, arXiv 2503.20783): ``sum_it m_it * l_it / (N * max_completion_length)``.

    A constant denominator: no length normalisation, so gradients do not depend on how long completions are.
    """
    return torch.where(mask.bool(), per_token, 0).sum() / (per_token.size(0) * max_completion_length)


def normalize_dapo(per_token: Tensor, mask: Tensor, num_active_tokens: float | Tensor) -> Tensor:
    """``loss_type="dapo"`` (DAPO token-level loss): ``sum_it m_it * l_it / num_active_tokens``.

    ``num_active_tokens`` = valid tokens of the whole optimizer step (all micro-batches, all ranks) divided by the
    world size; the caller computes it. Summed over micro-batches and averaged over ranks by DDP this gives every
    token of the global batch the same weight, with no further division by gradient accumulation. When it is 0
    nothing is valid anywhere and the loss is 0.
    """
    denominator = torch.as_tensor(num_active_tokens, dtype=per_token.dtype, device=per_token.device)
    return torch.where(mask.bool(), per_token, 0).sum() / denominator.clamp(min=torch.finfo(per_token.dtype).tiny)


# loss_type -> (normaliser, name of the grpo_loss argument it needs beyond (per_token, mask)).
_NORMALIZERS: dict[str, tuple[Callable[..., Tensor], str | None]] = {
    "grpo": (normalize_grpo, None),
    "bnpo": (normalize_bnpo, None),
    "dr_grpo": (normalize_dr_grpo, "max_completion_length"),
    "dapo": (normalize_dapo, "num_active_tokens"),
}


def loss_mask(completion_mask: Tensor, truncated: Tensor | None, mask_truncated_completions: bool) -> Tensor:
    """The tokens that count in the loss: valid completion tokens, minus truncated rows when asked (DAPO).

    >>> loss_mask(torch.tensor([[1, 1], [1, 0]]), torch.tensor([True, False]), True).tolist()
    [[False, False], [True, False]]
    """
    mask = completion_mask.bool()  # [N, L]
    if not mask_truncated_completions:
        return mask
    if truncated is None:
        raise ValueError("mask_truncated_completions=True needs the truncated flags")
    return mask & ~truncated.bool().unsqueeze(-1)  # [N, L]


def truncated_is_weights(old_logprobs: Tensor, sampler_logprobs: Tensor, cap: float = 2.0) -> Tensor:
    """Truncated importance-sampling weights ``min(exp(old - sampler), cap)`` per token, detached.

    Corrects for the sampler (vLLM) and the trainer computing slightly different log-probs for the same weights
    (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"); truncation at
    ``cap`` bounds the variance. Multiplies the per-token surrogate in :func:`grpo_loss`.

    >>> truncated_is_weights(torch.tensor([[0.0, 0.0]]), torch.tensor([[-0.1, -5.0]]))
    tensor([[1.1052, 2.0000]])
    """
    return torch.exp(old_logprobs - sampler_logprobs).clamp(max=cap).detach()  # [N, L]


def logprob_gap(sampler_logprobs: Tensor, trainer_logprobs: Tensor, mask: Tensor) -> Tensor:
    """Mean ``|sampler - trainer|`` log-prob difference over valid tokens, detached (a sampler mismatch metric)."""
    return masked_mean((sampler_logprobs - trainer_logprobs).abs(), mask).detach()


class LossOutput(NamedTuple):
    """What :func:`grpo_loss` returns: the loss to backpropagate and detached statistics to log."""

    loss: Tensor
    """Scalar, differentiable."""
    policy_loss: Tensor
    """Normalised surrogate part (no KL), detached."""
    kl: Tensor
    """Mean k3 KL over valid tokens, detached; 0 without reference log-probs (TRL 69ad852e logged per-sequence
    means averaged over sequences instead, which weighs short completions more)."""
    clip_ratio_low: Tensor
    """Fraction of valid tokens clipped at ``1 - epsilon`` with negative advantage."""
    clip_ratio_high: Tensor
    """Fraction of valid tokens clipped at ``1 + epsilon_high`` with positive advantage."""
    clip_ratio: Tensor
    """Fraction of valid tokens clipped at either side."""


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor | None,
    ref_logprobs: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    loss_type: LossType = "bnpo",
    beta: float = 0.04,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    max_completion_length: int | None = None,
    num_active_tokens: float | Tensor | None = None,
    truncated: Tensor | None = None,
    mask_truncated_completions: bool = False,
    is_weights: Tensor | None = None,
) -> LossOutput:
    """GRPO loss of one micro-batch: ``normalize(surrogate * is_weights + beta * k3_kl)`` over valid tokens.

    The recipe (TRL 69ad852e) is ``loss_type="bnpo"``, ``beta=0.04``, ``epsilon=0.2``, ``old_logprobs=None``.
    Gradient accumulation is the caller's: divide ``grpo``/``bnpo``/``dr_grpo`` losses by the number of
    micro-batches per step as TRL does; ``dapo``'s ``num_active_tokens`` already spans the whole step.

    Args:
        logprobs: ``[N, L]`` policy log-probs with grad.
        old_logprobs: ``[N, L]`` log-probs of the sampling policy (``num_iterations > 1``); ``None`` uses
            ``logprobs.detach()``, ratio 1.
        ref_logprobs: ``[N, L]`` reference log-probs; ``None`` (required when ``beta == 0`` skips the reference
            model) drops the KL term. Given with ``beta == 0``, the KL is still reported but adds nothing.
        advantages: ``[N]``.
        mask: ``[N, L]`` 1 on valid completion tokens. Values at masked positions, however large, never reach
            the loss or its gradient.
        loss_type: Normalisation, see the ``normalize_*`` functions.
        beta: KL coefficient.
        epsilon: Lower clip range.
        epsilon_high: Upper clip range (``None`` = ``epsilon``).
        max_completion_length: Needed by ``dr_grpo``.
        num_active_tokens: Needed by ``dapo``, counted after truncation masking.
        truncated: ``[N]`` bool, True for completions that hit the length limit without EOS.
        mask_truncated_completions: Drop truncated completions from the loss (DAPO overlong filtering).
        is_weights: ``[N, L]`` truncated importance-sampling weights (:func:`truncated_is_weights`).

    Returns:
        A :class:`LossOutput`.
    """
    if loss_type not in _NORMALIZERS:
        raise ValueError(f"loss_type must be one of {sorted(_NORMALIZERS)}, got {loss_type!r}")
    if beta != 0 and ref_logprobs is None:
        raise ValueError(f"beta={beta} needs ref_logprobs (use beta=0 to train without a reference model)")
    normalize, needed = _NORMALIZERS[loss_type]
    extra = {"max_completion_length": max_completion_length, "num_active_tokens": num_active_tokens}
    if needed is not None and extra[needed] is None:
        raise ValueError(f"loss_type={loss_type!r} needs {needed}")
    mask = loss_mask(mask, truncated, mask_truncated_completions)  # [N, L]

    def valid(x: Tensor) -> Tensor:
        # Zero the padding before any exp(): where() after an overflow would still send 0 * inf = NaN gradients.
        return torch.where(mask, x, 0)  # [N, L]

    def reduce(per_token: Tensor) -> Tensor:
        return normalize(per_token, mask, **({needed: extra[needed]} if needed else {}))

    logprobs = valid(logprobs)  # [N, L]
    old_logprobs = logprobs.detach() if old_logprobs is None else valid(old_logprobs)  # [N, L]
    surrogate, low_clipped, high_clipped = clipped_surrogate(logprobs, old_logprobs, advantages, epsilon, epsilon_high)
    if is_weights is not None:
        surrogate = surrogate * valid(is_weights)  # [N, L]
    per_token = surrogate  # [N, L]
    kl = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    if ref_logprobs is not None:
        per_token_kl = k3_kl(logprobs, valid(ref_logprobs))  # [N, L]
        per_token = surrogate + beta * per_token_kl  # [N, L]
        kl = masked_mean(per_token_kl, mask)
    return LossOutput(
        loss=reduce(per_token),
        policy_loss=reduce(surrogate).detach(),
        kl=kl.detach(),
        clip_ratio_low=masked_mean(low_clipped.to(logprobs.dtype), mask),
        clip_ratio_high=masked_mean(high_clipped.to(logprobs.dtype), mask),
        clip_ratio=masked_mean((low_clipped | high_clipped).to(logprobs.dtype), mask),
    )
