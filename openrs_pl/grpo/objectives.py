"""The objectives published after GRPO, as TRL 1.16 names them: small pure functions on tensors.

Each function is one idea from one paper; :func:`openrs_pl.grpo.loss.grpo_loss` composes them under TRL 1.16's
``GRPOConfig`` option names (``loss_type``, ``importance_sampling_level``, ``delta``, ``use_bias_correction_kl``,
``off_policy_mask_threshold``, ``top_entropy_quantile``, ``vllm_importance_sampling_mode`` ...), so a TRL user's
settings carry over. ``tests/grpo/test_trl_equality.py`` checks the composition against TRL 1.16's
``GRPOTrainer._compute_loss`` on identical inputs.

Shapes as in :mod:`openrs_pl.grpo.loss`: ``N`` completions, ``L`` padded completion length. Importance ratios are
``[N, L]`` at ``importance_sampling_level="token"`` and ``[N, 1]`` at ``"sequence"`` (broadcast over tokens).
This module imports nothing from the rest of the package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"]
ImportanceSamplingLevel = Literal["token", "sequence"]
SamplerISMode = Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]


def _masked_row_mean(values: Tensor, mask: Tensor) -> Tensor:
    """``[N, 1]`` mean over each row's valid tokens (0 for an empty row)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)


def log_importance_weights(
    logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, level: ImportanceSamplingLevel = "token"
) -> Tensor:
    """``log r``: per token ``logp - old`` (PPO), or per sequence its mean over valid tokens (GSPO).

    GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv 2507.18071, eq. 7) uses the
    length-normalised sequence ratio ``s_i = (pi(y_i) / pi_old(y_i)) ** (1 / |y_i|)``, i.e.
    ``log s_i = (1/|y_i|) * sum_t (logp_it - old_it)``, the same for every token of the sequence.

    Args:
        logprobs: ``[N, L]`` with grad. old_logprobs: ``[N, L]``. mask: ``[N, L]`` valid tokens.
        level: ``"token"`` -> ``[N, L]``; ``"sequence"`` -> ``[N, 1]``.

    >>> logp, mask = torch.tensor([[0.0, -1.0, 9.0]]), torch.tensor([[1, 1, 0]])
    >>> log_importance_weights(logp, torch.zeros(1, 3), mask, "sequence")  # (0 - 1) / 2; the padding is ignored
    tensor([[-0.5000]])
    """
    log_ratio = logprobs - old_logprobs  # [N, L]
    if level == "token":
        return log_ratio
    if level == "sequence":
        return _masked_row_mean(log_ratio, mask)  # [N, 1]
    raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', got {level!r}")


def ppo_clip_loss(
    ratio: Tensor, advantages: Tensor, epsilon_low: float, epsilon_high: float, delta: float | None = None
) -> Tensor:
    """``-min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A)``, with INTELLECT-2's two-sided clip when ``delta``.

    Two-sided clipping (INTELLECT-2, arXiv 2505.07291, §3.3): the unclipped branch is capped, ``min(r, delta)``,
    so a token with negative advantage and a huge ratio cannot produce an unbounded update. ``delta`` should
    exceed ``1 + eps_high``.

    Args:
        ratio: ``[N, L]`` or ``[N, 1]`` importance ratio (with grad). advantages: ``[N, 1]``.

    >>> ppo_clip_loss(torch.tensor([[3.0]]), torch.tensor([[-1.0]]), 0.2, 0.2, delta=2.0)  # -min(-2, -1.2)
    tensor([[2.]])
    """
    clipped = ratio.clamp(1 - epsilon_low, 1 + epsilon_high)
    if delta is not None:
        ratio = ratio.clamp(max=delta)
    return -torch.min(ratio * advantages, clipped * advantages)


def cispo_loss(ratio: Tensor, advantages: Tensor, logprobs: Tensor, epsilon_high: float) -> Tensor:
    """CISPO (MiniMax-M1, arXiv 2506.13585, eq. 4): ``-sg(min(r, eps_max)) * A * logp``.

    Clips the importance weight instead of the update: every token keeps a gradient ``min(r, eps_max) * A``
    (none is dropped by the clip, unlike PPO). ``epsilon_high`` is ``eps_max`` itself (ScaleRL, arXiv 2510.13786,
    recommends 5.0), not ``1 + eps``.

    >>> cispo_loss(torch.tensor([[7.0]]), torch.tensor([[2.0]]), torch.tensor([[-0.5]]), 5.0)  # -5 * 2 * -0.5
    tensor([[5.]])
    """
    return -ratio.clamp(max=epsilon_high).detach() * advantages * logprobs


def sapo_loss(ratio: Tensor, advantages: Tensor, temperature_pos: float = 1.0, temperature_neg: float = 1.05) -> Tensor:
    """SAPO (Soft Adaptive Policy Optimization, arXiv 2511.20347): a smooth gate replaces the hard clip.

    ``loss = -(4 / tau) * sigmoid(tau * (r - 1)) * A`` with ``tau = temperature_pos`` where ``A > 0`` and
    ``temperature_neg`` otherwise. At ``r = 1`` the gate's slope is ``sigma'(0) * 4 = 1``, the plain policy
    gradient; it decays smoothly as ``r`` leaves 1, faster for larger ``tau``.

    >>> sapo_loss(torch.tensor([[1.0]]), torch.tensor([[1.0]]))  # -(4/1) * 0.5 * 1
    tensor([[-2.]])
    """
    tau = torch.where(advantages > 0, temperature_pos, temperature_neg)
    return -(torch.sigmoid(tau * (ratio - 1)) * 4 / tau) * advantages


@torch.no_grad()
def vespo_weights(
    advantages: Tensor,
    log_ratio: Tensor,
    mask: Tensor,
    is_ratio: Tensor | None = None,
    k_pos: float = 2.0,
    lambda_pos: float = 3.0,
    k_neg: float = 3.0,
    lambda_neg: float = 2.0,
) -> Tensor:
    """VESPO's Gamma weight ``phi(w) = exp(lambda) * w**k * exp(-lambda * w)`` of the sequence ratio, detached.

    VESPO (arXiv 2602.10693): ``w = prod_t r_t`` (times the sampler-mismatch ratio when given), in log space
    ``log w = clamp(sum_t clamp(log r_t, -20, 20) + sum_t log is_t, log 1e-8, 20)``; ``phi(1) = 1``, and ``phi``
    decays for ``w`` far from 1 on both sides. ``(k, lambda)`` are picked by the sign of the advantage
    (``A >= 0`` positive). The loss is ``-phi * A * logp``.

    Args:
        advantages: ``[N, 1]``. log_ratio: ``[N, L]`` per-token ``logp - old``. mask: ``[N, L]``.
        is_ratio: ``[N, L]`` sampler importance ratios or None.

    Returns:
        ``[N, 1]`` weights (NaN/inf mapped to 0).

    >>> vespo_weights(torch.tensor([[1.0]]), torch.zeros(1, 2), torch.ones(1, 2))  # w = 1 -> phi = 1
    tensor([[1.]])
    """
    floor = math.log(1e-8)
    log_w = (log_ratio.clamp(-20.0, 20.0) * mask).sum(-1, keepdim=True)  # [N, 1]
    if is_ratio is not None:
        log_w = log_w + torch.log(is_ratio).clamp(floor, 20.0).sum(-1, keepdim=True)
    log_w = log_w.clamp(floor, 20.0)
    nonneg = advantages >= 0
    k = torch.where(nonneg, k_pos, k_neg)
    lam = torch.where(nonneg, lambda_pos, lambda_neg).clamp(min=1e-4)
    return torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def normalize_luspo(per_token: Tensor, mask: Tensor) -> Tensor:
    """``loss_type="luspo"`` (LUSPO, arXiv 2602.05261): ``(1/N) sum_i sum_t m_it * l_it``.

    Each sequence's loss summed over its tokens (with sequence-level ratios: scaled by its length), then the
    mean over sequences: GSPO without its length bias.
    """
    return torch.where(mask.bool(), per_token, 0).sum(-1).mean()


def off_policy_mask(
    advantages: Tensor, logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor, threshold: float
) -> Tensor:
    """DeepSeek-V3.2's off-policy sequence mask (arXiv 2512.02556, eq. 9): drop ``A < 0`` sequences that drifted.

    ``keep_i = A_i >= 0  or  (1/|y_i|) sum_t (log pi_sampler - log pi_theta) <= threshold``. Tokens with a NaN
    sampler log-prob contribute 0 to the mean.

    Returns:
        ``[N, 1]`` 1.0 = keep, 0.0 = drop, in ``mask``'s dtype (a float mask keeps TRL's arithmetic exactly).

    >>> off_policy_mask(torch.tensor([[-1.0], [-1.0]]), torch.tensor([[-2.0], [0.0]]), torch.zeros(2, 1),
    ...                 torch.ones(2, 1), 0.5).flatten().tolist()
    [0.0, 1.0]
    """
    kl = torch.nan_to_num(sampler_logprobs - logprobs.detach(), nan=0.0)  # [N, L]
    seq_kl = _masked_row_mean(kl, mask)  # [N, 1]
    return ((advantages >= 0) | (seq_kl <= threshold)).to(mask.dtype)


def token_entropy(logits: Tensor) -> Tensor:
    """Shannon entropy ``H = -sum_v p_v log p_v`` of ``softmax(logits)`` along the last axis, in float32 or wider.

    >>> token_entropy(torch.zeros(1, 4))  # uniform over 4: log 4
    tensor([1.3863])
    """
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def high_entropy_mask(entropies: Tensor, mask: Tensor, top_entropy_quantile: float) -> Tensor:
    """Keep the top ``rho`` quantile of valid tokens by entropy ("Beyond the 80/20 Rule", arXiv 2506.01939).

    ``keep_t = m_t and H_t >= quantile({H_s : m_s}, 1 - rho)`` (linear interpolation, as ``torch.quantile``); the
    paper trains on the top 20% (``rho = 0.2``) "forking" tokens. ``rho = 0`` keeps the maximum, 1 keeps all.
    Only this micro-batch's tokens enter the quantile (TRL gathers them across ranks first).

    >>> high_entropy_mask(torch.tensor([[0.1, 0.9, 0.5, 7.0]]), torch.tensor([[1, 1, 1, 0]]), 0.5).tolist()
    [[False, True, True, False]]
    """
    mask = mask.bool()
    valid = entropies[mask].float()
    if valid.numel() == 0:
        return torch.zeros_like(mask)
    threshold = torch.quantile(valid, 1 - top_entropy_quantile)
    return (entropies * mask >= threshold) & mask


def sampler_is_weights(
    old_logprobs: Tensor,
    sampler_logprobs: Tensor,
    mask: Tensor,
    mode: SamplerISMode = "token_truncate",
    clip_min: float | None = None,
    clip_max: float | None = 3.0,
) -> Tensor:
    """Importance weights for the sampler (vLLM) vs trainer log-prob mismatch, detached.

    ``rho = exp(old - sampler)`` per token (``token_*``) or ``exp(sum_t m_t (old_t - sampler_t))`` per sequence
    (``sequence_*``). ``*_truncate`` clamps ``rho`` to ``[clip_min, clip_max]`` (truncated IS, Yao et al. 2025,
    "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"); ``*_mask`` sets weights outside
    that range to 0 (masked IS, Liu et al. 2025, "When speed kills stability"). NaN sampler log-probs count as
    no mismatch (weight 1). TRL 1.16 names: ``vllm_importance_sampling_mode``/``_clip_min``/``_clip_max``.

    Returns:
        ``[N, L]`` (token modes) or ``[N, 1]`` (sequence modes).

    >>> sampler_is_weights(torch.zeros(1, 2), torch.tensor([[-0.1, -5.0]]), torch.ones(1, 2), clip_max=2.0)
    tensor([[1.1052, 2.0000]])
    """
    diff = torch.nan_to_num((old_logprobs - sampler_logprobs) * mask, nan=0.0)  # [N, L]
    if mode.startswith("sequence"):
        diff = diff.sum(-1, keepdim=True)  # [N, 1]
    ratio = torch.exp(diff).detach()
    if mode in ("token_truncate", "sequence_truncate"):
        if clip_min is None and clip_max is None:
            raise ValueError(f"vllm_importance_sampling_mode={mode!r} needs clip_min or clip_max")
        return ratio.clamp(min=clip_min, max=clip_max)
    if mode in ("token_mask", "sequence_mask"):
        low = -math.inf if clip_min is None else clip_min
        high = math.inf if clip_max is None else clip_max
        return ratio.masked_fill((ratio < low) | (ratio > high), 0.0)
    raise ValueError(
        "vllm_importance_sampling_mode must be one of token_truncate, token_mask, sequence_truncate, "
        f"sequence_mask; got {mode!r}"
    )


def stale_is_weights(
    old_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor, staleness: Tensor, cap: float | None
) -> Tensor:
    """Truncated importance weights for completions sampled by older weights (overlapped rollouts), detached.

    ``w_it = min(exp(old_it - sampler_it), cap)`` on rows with ``staleness_i > 0`` (truncated IS, Yao et al. 2025,
    :func:`sampler_is_weights` in ``token_truncate`` mode), ``w_it = 1`` on rows sampled by the current weights.
    ``cap`` None = untruncated.

    Shapes: logprobs and mask ``[N, L]``, staleness ``[N]``; returns ``[N, L]``.

    >>> sampler = torch.tensor([[-0.1, -5.0]] * 2)
    >>> stale_is_weights(torch.zeros(2, 2), sampler, torch.ones(2, 2), torch.tensor([1, 0]), cap=2.0)
    tensor([[1.1052, 2.0000],
            [1.0000, 1.0000]])
    """
    weights = sampler_is_weights(old_logprobs, sampler_logprobs, mask, "token_truncate", 0.0, cap)  # [N, L]
    return torch.where(staleness[:, None] > 0, weights, torch.ones_like(weights))


def entropy_bonus(entropies: Tensor, mask: Tensor) -> Tensor:
    """Mean entropy over ``mask`` (0 when empty): the loss subtracts ``entropy_coef`` times it (TRL 1.16).

    >>> entropy_bonus(torch.tensor([[1.0, 3.0, 9.0]]), torch.tensor([[1, 1, 0]]))
    tensor(2.)
    """
    mask = mask.to(entropies.dtype)
    return (entropies * mask).sum() / mask.sum().clamp(min=1.0)


@dataclass
class AdaptiveEntropy:
    """Skywork-OR1's adaptive entropy control (arXiv 2505.22312, §3.2.3), as TRL 1.16's ``use_adaptive_entropy``.

    After each optimizer step the coefficient moves by ``delta`` toward keeping entropy at ``target``:
    ``coef += delta`` if the step's mean entropy ``H <= target`` else ``coef -= delta``, clamped to
    ``[coef_min, coef_max]``; the bonus is applied on the next step only while the last ``H <= target``
    (no bonus before the first measurement).

    >>> ctl = AdaptiveEntropy(coef=0.0, target=1.0, delta=0.1)
    >>> ctl.applied_coef(), ctl.update(0.5), ctl.applied_coef(), ctl.update(2.0), ctl.applied_coef()
    (0.0, 0.1, 0.1, 0.0, 0.0)
    """

    coef: float
    target: float = 0.2
    delta: float = 0.005
    coef_min: float = 0.0
    coef_max: float = 1.0
    last_entropy: float = math.inf

    def applied_coef(self) -> float:
        """The coefficient the coming step's loss uses."""
        return self.coef if self.last_entropy <= self.target else 0.0

    def update(self, entropy: float) -> float:
        """Record the finished step's mean entropy and return the new coefficient."""
        step = self.delta if entropy <= self.target else -self.delta
        self.coef = min(max(self.coef + step, self.coef_min), self.coef_max)
        self.last_entropy = entropy
        return self.coef
