"""Typed configuration groups of the GRPO module. Each field's docstring is its ``--help`` text in the CLI.

Frozen, so the default instances in :class:`~openrs_pl.grpo.module.GRPOModule`'s signature can be shared safely
(jsonargparse expands a group's fields in ``--help`` only when its default is an instance, not ``None``).
Sampling settings (group size, temperature, length limit) and the reward scaling belong to the rollout side:
see :class:`~openrs_pl.rollout.callback.RolloutCallback`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from openrs_pl.grpo.objectives import (
    AdaptiveEntropy,
    ImportanceSamplingLevel,
    LossType,
    SamplerISMode,
)


@dataclass(frozen=True)
class GRPOConfig:
    """The GRPO objective and its batch layout. Defaults are the Open-RS recipe's."""

    micro_batch_size: int = 6
    """Completions per forward/backward pass (the recipe's per_device_train_batch_size)."""
    num_iterations: int = 1
    """Optimisation passes over each generation batch (GRPO's mu). 1 = strictly on-policy, ratio == 1."""
    loss_type: LossType = "bnpo"
    """Objective and normalisation, as TRL 1.16: grpo (per-sequence mean), bnpo (token mean per micro-batch; what
    the recipe's pinned TRL did), dr_grpo (sum / (rows * max_completion_length)), dapo (token mean over the global
    batch), cispo (clipped-weight REINFORCE, MiniMax-M1), sapo (soft gate, arXiv 2511.20347), luspo (per-sequence
    sum, arXiv 2602.05261), vespo (Gamma-weighted sequence ratio, arXiv 2602.10693)."""
    beta: float = 0.04
    """KL coefficient against the frozen reference (k3 estimator). 0 = no reference model is loaded."""
    epsilon: float = 0.2
    """Lower clip range of the importance ratio."""
    epsilon_high: float | None = None
    """Upper clip range (DAPO clip-higher, e.g. 0.28); None = same as epsilon."""
    mask_truncated_completions: bool = False
    """Exclude completions that hit the length limit without EOS from the loss (DAPO overlong filtering)."""
    logprob_chunk_size: int = 2
    """Rows per forward when computing log-probs, bounding the logits held in memory at once."""
    packing: bool = False
    """Padding-free log-prob passes: whole prompt + completion sequences side by side in rows of at most
    pack_tokens tokens, position ids restarting per sequence (flash-attention varlen on GPU, a block-diagonal mask
    with sdpa), so no pad token is computed. Same values as the padded passes."""
    pack_tokens: int = 4096
    """Token budget of one packed row (one forward; a longer sequence gets a row of its own); replaces
    logprob_chunk_size when packing. With sdpa on CPU a row's attention is dense under its block mask, so keep it
    near the longest prompt + completion; flash-attention varlen (GPU) computes only the blocks."""
    share_prompts: bool = False
    """With packing: each prompt is computed once per group of completions that follow it, each completion
    attending to the prompt and to itself only (needs sdpa or eager attention). Same values as without."""

    def __post_init__(self) -> None:
        if self.micro_batch_size < 1 or self.num_iterations < 1 or self.logprob_chunk_size < 1:
            raise ValueError("grpo.micro_batch_size, grpo.num_iterations and grpo.logprob_chunk_size must be >= 1")
        if self.pack_tokens < 1:
            raise ValueError(f"grpo.pack_tokens must be >= 1, got {self.pack_tokens}")
        if self.share_prompts and not self.packing:
            raise ValueError("grpo.share_prompts needs grpo.packing")
        if self.beta < 0:
            raise ValueError(f"grpo.beta must be >= 0, got {self.beta}")
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise ValueError(f"grpo.epsilon_high ({self.epsilon_high}) must be >= grpo.epsilon ({self.epsilon})")
        self._check_objective_options()

    importance_sampling_level: ImportanceSamplingLevel = "token"
    """Importance ratio per token (PPO) or one length-normalised ratio per sequence (GSPO, arXiv 2507.18071)."""
    delta: float | None = None
    """Two-sided clipping: cap the unclipped ratio at delta (INTELLECT-2, arXiv 2505.07291; > 1 + epsilon_high).
    None = off."""
    use_bias_correction_kl: bool = False
    """Multiply the k3 KL by the importance ratio, the unbiased KL gradient of DeepSeek-V3.2 (arXiv 2512.02556).
    TRL 1.16 defaults it to True; here False, because the recipe's TRL had no such correction."""
    off_policy_mask_threshold: float | None = None
    """Drop negative-advantage sequences whose mean (sampler - policy) log-prob gap exceeds this (DeepSeek-V3.2
    eq. 9, e.g. 0.5). None = off."""
    top_entropy_quantile: float = 1.0
    """Keep only this top fraction of tokens by entropy in the policy loss (arXiv 2506.01939 uses 0.2); 1.0 = all.
    Below 1 the log-prob pass also computes per-token entropies."""
    entropy_coef: float = 0.0
    """Entropy bonus: the loss subtracts entropy_coef x mean token entropy. 0 = off (the initial value when
    use_adaptive_entropy)."""
    use_adaptive_entropy: bool = False
    """Skywork-OR1 adaptive entropy control (arXiv 2505.22312): entropy_coef += entropy_coef_delta after a step
    whose mean entropy is <= entropy_target, -= otherwise; the bonus applies only while entropy <= target."""
    entropy_coef_min: float = 0.0
    """Lower bound of the adaptive entropy coefficient."""
    entropy_coef_max: float = 1.0
    """Upper bound of the adaptive entropy coefficient."""
    entropy_coef_delta: float = 0.005
    """Step of the adaptive entropy coefficient per optimizer step."""
    entropy_target: float = 0.2
    """Target mean token entropy (nats) of adaptive entropy control."""
    sapo_temperature_pos: float = 1.0
    """SAPO gate temperature for tokens with positive advantage."""
    sapo_temperature_neg: float = 1.05
    """SAPO gate temperature for tokens with non-positive advantage."""
    vespo_k_pos: float = 2.0
    """VESPO Gamma power k for non-negative advantages."""
    vespo_lambda_pos: float = 3.0
    """VESPO Gamma decay lambda for non-negative advantages."""
    vespo_k_neg: float = 3.0
    """VESPO Gamma power k for negative advantages."""
    vespo_lambda_neg: float = 2.0
    """VESPO Gamma decay lambda for negative advantages."""
    vllm_importance_sampling_correction: bool = False
    """Correct for the engine-vs-trainer log-prob mismatch with importance weights (needs an engine that reports
    log-probs). TRL 1.16 defaults it to True; here False (the recipe)."""
    vllm_importance_sampling_mode: SamplerISMode = "sequence_mask"
    """token_truncate / sequence_truncate clamp the weight to [clip_min, clip_max]; token_mask / sequence_mask zero
    weights outside it. (token_truncate with clip_max C is the old truncated IS with cap C.)"""
    vllm_importance_sampling_clip_min: float | None = None
    """Lower bound of the sampler importance weight; None = none."""
    vllm_importance_sampling_clip_max: float | None = 3.0
    """Upper bound of the sampler importance weight; None = none. Also the cap of the truncated IS that corrects
    completions sampled by older weights (``rollout.overlap``) when this correction is off."""

    def _check_objective_options(self) -> None:
        if self.delta is not None and self.delta <= 1 + (self.epsilon_high or self.epsilon):
            raise ValueError(f"grpo.delta ({self.delta}) must be > 1 + epsilon_high")
        if not 0.0 <= self.top_entropy_quantile <= 1.0:
            raise ValueError(f"grpo.top_entropy_quantile must be in [0, 1], got {self.top_entropy_quantile}")
        low, high = self.vllm_importance_sampling_clip_min, self.vllm_importance_sampling_clip_max
        if low is not None and high is not None and low >= high:
            raise ValueError(f"grpo.vllm_importance_sampling_clip_min ({low}) must be < clip_max ({high})")
        if self.vllm_importance_sampling_mode.endswith("truncate") and low is None and high is None:
            raise ValueError("a *_truncate vllm_importance_sampling_mode needs clip_min or clip_max")
        if self.entropy_coef_min > self.entropy_coef_max:
            raise ValueError("grpo.entropy_coef_min must be <= grpo.entropy_coef_max")

    @property
    def needs_entropies(self) -> bool:
        """Whether the log-prob pass must also compute per-token entropies."""
        return self.top_entropy_quantile < 1.0 or self.entropy_coef != 0 or self.use_adaptive_entropy

    def adaptive_entropy(self) -> AdaptiveEntropy | None:
        """A fresh adaptive entropy controller when ``use_adaptive_entropy``, else None."""
        if not self.use_adaptive_entropy:
            return None
        return AdaptiveEntropy(
            coef=self.entropy_coef,
            target=self.entropy_target,
            delta=self.entropy_coef_delta,
            coef_min=self.entropy_coef_min,
            coef_max=self.entropy_coef_max,
        )

    def loss_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~openrs_pl.grpo.loss.grpo_loss` this config sets (same names)."""
        names = (
            "loss_type", "beta", "epsilon", "epsilon_high", "mask_truncated_completions", "importance_sampling_level",
            "delta", "use_bias_correction_kl", "off_policy_mask_threshold", "top_entropy_quantile",
            "sapo_temperature_pos", "sapo_temperature_neg", "vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg",
            "vespo_lambda_neg",
        )  # fmt: skip
        return {name: getattr(self, name) for name in names}

    def check_batch(self, completions_per_rank: int) -> None:
        """Raise if a rank's generation batch cannot be cut into whole micro-batches."""
        if completions_per_rank % self.micro_batch_size:
            raise ValueError(
                f"{completions_per_rank} completions per rank (data.prompts_per_step x rollout.num_generations) is"
                f" not divisible by model.grpo.micro_batch_size ({self.micro_batch_size})"
            )


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a cosine schedule that decays to ``min_lr_rate * lr`` after a linear warm-up."""

    lr: float = 1e-6
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay (HF default 0.0, as in the recipe)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_ratio: float = 0.1
    """Fraction of the optimizer steps spent in linear warm-up."""
    min_lr_rate: float = 0.1
    """Floor of the cosine decay, as a fraction of lr (transformers' cosine_with_min_lr)."""
    max_grad_norm: float | None = 1.0
    """Gradient-norm clipping; None = off."""
    fused: bool = True
    """torch's fused AdamW: one kernel over all parameters instead of a loop of small ops per parameter (the
    default of transformers' Trainer with torch >= 2.8). Same update to float rounding; on one CPU core the step of
    a 24M-parameter model takes 0.024 s instead of 0.12 s. False = torch's per-parameter loop."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or not 0 <= self.warmup_ratio < 1 or not 0 <= self.min_lr_rate <= 1:
            raise ValueError("optim: need lr > 0, 0 <= warmup_ratio < 1 and 0 <= min_lr_rate <= 1")
