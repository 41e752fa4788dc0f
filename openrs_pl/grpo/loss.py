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
from typing import NamedTuple

import torch
from torch import Tensor

from openrs_pl.grpo.objectives import (
    ImportanceSamplingLevel,
    LossType,
    cispo_loss,
    entropy_bonus,
    high_entropy_mask,
    log_importance_weights,
    normalize_luspo,
    off_policy_mask,
    ppo_clip_loss,
    sapo_loss,
    vespo_weights,
)


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
    per_token_loss = ppo_clip_loss(ratio, advantages, epsilon, epsilon_high)  # [N, L]
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
    "cispo": (normalize_dapo, "num_active_tokens"),
    "vespo": (normalize_dapo, "num_active_tokens"),
    "sapo": (normalize_grpo, None),
    "luspo": (normalize_luspo, None),
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


def logprob_gap(sampler_logprobs: Tensor, trainer_logprobs: Tensor, mask: Tensor) -> Tensor:
    """Mean ``|sampler - trainer|`` log-prob difference over valid tokens, detached (a sampler mismatch metric)."""
    return masked_mean((sampler_logprobs - trainer_logprobs).abs(), mask).detach()


class LossOutput(NamedTuple):
    """What :func:`grpo_loss` returns: the loss to backpropagate and detached statistics to log."""

    loss: Tensor
    """Scalar, differentiable."""
    policy_loss: Tensor
    """Normalised surrogate part (no KL, no entropy bonus), detached."""
    kl: Tensor
    """Mean k3 KL over valid tokens (times the ratio with ``use_bias_correction_kl``), detached; 0 without
    reference log-probs (TRL 69ad852e logged per-sequence means averaged over sequences instead)."""
    clip_ratio_low: Tensor
    """Fraction of valid tokens clipped at ``1 - epsilon`` with negative advantage (sequence-level ratios count
    once per token)."""
    clip_ratio_high: Tensor
    """Fraction of valid tokens clipped at ``1 + epsilon_high`` with positive advantage."""
    clip_ratio: Tensor
    """Fraction of valid tokens clipped at either side."""
    entropy: Tensor | None = None
    """Mean per-token entropy over the tokens the entropy bonus acts on (the top-quantile tokens when
    ``top_entropy_quantile < 1``), detached; None when no entropies were given."""


GLOBAL_TOKEN_LOSSES = frozenset(name for name, (_, needed) in _NORMALIZERS.items() if needed == "num_active_tokens")
"""Loss types normalised by the token count of the whole optimizer step (dapo, cispo, vespo)."""


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
    importance_sampling_level: ImportanceSamplingLevel = "token",
    delta: float | None = None,
    use_bias_correction_kl: bool = False,
    off_policy_mask_threshold: float | None = None,
    sampler_logprobs: Tensor | None = None,
    entropies: Tensor | None = None,
    top_entropy_quantile: float = 1.0,
    entropy_coef: float = 0.0,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
    vespo_k_pos: float = 2.0,
    vespo_lambda_pos: float = 3.0,
    vespo_k_neg: float = 3.0,
    vespo_lambda_neg: float = 2.0,
) -> LossOutput:
    """GRPO-family loss of one micro-batch, option for option TRL 1.16's ``GRPOTrainer._compute_loss``.

    ``r = exp(log_importance_weights)`` (token or sequence level), then per token

        l = objective(r, A, logp) * offpolicy_keep * entropy_keep * is_weights + beta * KL * (r if bias-corrected)

    normalised by ``loss_type`` over the loss tokens, minus ``entropy_coef`` times their mean entropy.
    ``objective`` is the PPO clip (grpo, bnpo, dr_grpo, dapo, luspo; two-sided with ``delta``),
    :func:`~openrs_pl.grpo.objectives.cispo_loss`, :func:`~openrs_pl.grpo.objectives.sapo_loss` or VESPO's
    ``-phi(w) * A * logp`` (which takes the sampler weights into ``w`` instead of multiplying by them).

    The recipe (TRL 69ad852e) is ``loss_type="bnpo"``, ``beta=0.04``, ``epsilon=0.2``, ``old_logprobs=None``.
    Gradient accumulation is the caller's: divide every loss type not in :data:`GLOBAL_TOKEN_LOSSES` by the number
    of micro-batches per step as TRL does; their ``num_active_tokens`` already spans the whole step. Unlike TRL,
    ``use_bias_correction_kl`` defaults to False (the recipe predates it).

    Args:
        logprobs: ``[N, L]`` policy log-probs with grad.
        old_logprobs: ``[N, L]`` log-probs of the sampling policy (``num_iterations > 1``); ``None`` uses
            ``logprobs.detach()``, ratio 1.
        ref_logprobs: ``[N, L]`` reference log-probs; ``None`` (required when ``beta == 0`` skips the reference
            model) drops the KL term. Given with ``beta == 0``, the KL is still reported but adds nothing.
        advantages: ``[N]``.
        mask: ``[N, L]`` 1 on valid completion tokens. Values at masked positions, however large, never reach
            the loss or its gradient.
        loss_type: grpo, bnpo, dr_grpo, dapo, cispo, sapo, luspo or vespo.
        beta: KL coefficient.
        epsilon: Lower clip range.
        epsilon_high: Upper clip range (``None`` = ``epsilon``); for cispo the cap on the ratio itself.
        max_completion_length: Needed by ``dr_grpo``.
        num_active_tokens: Needed by dapo, cispo and vespo, counted after truncation masking.
        truncated: ``[N]`` bool, True for completions that hit the length limit without EOS.
        mask_truncated_completions: Drop truncated completions from the loss (DAPO overlong filtering).
        is_weights: ``[N, L]`` or ``[N, 1]`` sampler importance weights
            (:func:`~openrs_pl.grpo.objectives.sampler_is_weights`).
        importance_sampling_level: ``"token"`` (PPO) or ``"sequence"`` (GSPO) ratios.
        delta: Two-sided clipping cap on the unclipped ratio (INTELLECT-2); None = off.
        use_bias_correction_kl: Multiply the KL by the ratio (DeepSeek-V3.2's unbiased KL gradient).
        off_policy_mask_threshold: Drop negative-advantage sequences whose mean ``sampler - logp`` exceeds it
            (DeepSeek-V3.2); None = off.
        sampler_logprobs: ``[N, L]`` the engine's log-probs, for the off-policy mask (else ``old_logprobs``).
        entropies: ``[N, L]`` per-token entropies of the policy, needed by the two options below.
        top_entropy_quantile: Train only on this top fraction of tokens by entropy; 1.0 = all.
        entropy_coef: Entropy bonus coefficient (subtracted times the mean entropy); 0 = off.
        sapo_temperature_pos: SAPO gate temperature where ``A > 0``.
        sapo_temperature_neg: SAPO gate temperature where ``A <= 0``.
        vespo_k_pos: VESPO Gamma power for ``A >= 0``.
        vespo_lambda_pos: VESPO Gamma decay for ``A >= 0``.
        vespo_k_neg: VESPO Gamma power for ``A < 0``.
        vespo_lambda_neg: VESPO Gamma decay for ``A < 0``.

    Returns:
        A :class:`LossOutput`.
    """
    if loss_type not in _NORMALIZERS:
        raise ValueError(f"loss_type must be one of {sorted(_NORMALIZERS)}, got {loss_type!r}")
    if beta != 0 and ref_logprobs is None:
        raise ValueError(f"beta={beta} needs ref_logprobs (use beta=0 to train without a reference model)")
    if entropies is None and (top_entropy_quantile < 1.0 or entropy_coef != 0):
        raise ValueError("top_entropy_quantile < 1 and entropy_coef != 0 need the per-token entropies")
    normalize, needed = _NORMALIZERS[loss_type]
    extra = {"max_completion_length": max_completion_length, "num_active_tokens": num_active_tokens}
    if needed is not None and extra[needed] is None:
        raise ValueError(f"loss_type={loss_type!r} needs {needed}")
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    mask = loss_mask(mask, truncated, mask_truncated_completions)  # [N, L]

    def valid(x: Tensor) -> Tensor:
        # Zero the padding before any exp(): where() after an overflow would still send 0 * inf = NaN gradients.
        return torch.where(mask, x, 0)  # [N, L]

    def reduce(per_token: Tensor) -> Tensor:
        return normalize(per_token, mask, **({needed: extra[needed]} if needed else {}))

    logprobs = valid(logprobs)  # [N, L]
    old_logprobs = logprobs.detach() if old_logprobs is None else valid(old_logprobs)  # [N, L]
    adv = advantages.unsqueeze(-1)  # [N, 1]
    log_ratio = log_importance_weights(logprobs, old_logprobs, mask, importance_sampling_level)  # [N, L] or [N, 1]
    ratio = torch.exp(log_ratio)
    if loss_type == "cispo":
        surrogate = cispo_loss(ratio, adv, logprobs, epsilon_high)
    elif loss_type == "sapo":
        surrogate = sapo_loss(ratio, adv, sapo_temperature_pos, sapo_temperature_neg)
    elif loss_type == "vespo":
        phi = vespo_weights(
            adv, logprobs - old_logprobs, mask, is_weights, vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg
        )  # [N, 1]
        surrogate = -phi * adv * logprobs  # [N, L]
    else:
        surrogate = ppo_clip_loss(ratio, adv, epsilon, epsilon_high, delta)
    if off_policy_mask_threshold is not None:
        reference = old_logprobs if sampler_logprobs is None else sampler_logprobs
        surrogate = surrogate * off_policy_mask(adv, logprobs, reference, mask.float(), off_policy_mask_threshold)
    if top_entropy_quantile < 1.0 and entropies is not None:  # (checked above: given whenever needed)
        keep = high_entropy_mask(entropies, mask, top_entropy_quantile)  # [N, L]
        surrogate = surrogate * keep
        mask_for_entropy = keep
    else:
        mask_for_entropy = mask
    if is_weights is not None and loss_type != "vespo":
        surrogate = surrogate * is_weights
    per_token = surrogate
    kl = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    if ref_logprobs is not None:
        per_token_kl = k3_kl(logprobs, valid(ref_logprobs))  # [N, L]
        if use_bias_correction_kl:
            per_token_kl = per_token_kl * ratio
        per_token = surrogate + beta * per_token_kl  # [N, L]
        kl = masked_mean(per_token_kl, mask)
    loss = reduce(per_token)
    entropy = None
    if entropies is not None:
        entropy = entropy_bonus(entropies, mask_for_entropy)
        loss = loss - entropy_coef * entropy
        entropy = entropy.detach()
    low_clipped = (ratio < 1 - epsilon) & (adv < 0)  # [N, L] or [N, 1]
    high_clipped = (ratio > 1 + epsilon_high) & (adv > 0)
    as_tokens = torch.zeros_like(logprobs, dtype=torch.bool)  # broadcasts sequence-level flags to tokens

    def clip_fraction(flags: Tensor) -> Tensor:
        return masked_mean((flags | as_tokens).to(logprobs.dtype), mask).detach()

    return LossOutput(
        loss=loss,
        policy_loss=reduce(surrogate).detach(),
        kl=kl.detach(),
        clip_ratio_low=clip_fraction(low_clipped),
        clip_ratio_high=clip_fraction(high_clipped),
        clip_ratio=clip_fraction(low_clipped | high_clipped),
        entropy=entropy,
    )
