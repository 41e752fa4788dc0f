"""Typed configuration groups of the GRPO module. Each field's docstring is its ``--help`` text in the CLI.

Frozen, so the default instances in :class:`~openrs_pl.grpo.module.GRPOModule`'s signature can be shared safely
(jsonargparse expands a group's fields in ``--help`` only when its default is an instance, not ``None``).
Sampling settings (group size, temperature, length limit) and the reward scaling belong to the rollout side:
see :class:`~openrs_pl.rollout.callback.RolloutCallback`.
"""

from __future__ import annotations

from dataclasses import dataclass

from openrs_pl.grpo.loss import LossType


@dataclass(frozen=True)
class GRPOConfig:
    """The GRPO objective and its batch layout. Defaults are the Open-RS recipe's."""

    micro_batch_size: int = 6
    """Completions per forward/backward pass (the recipe's per_device_train_batch_size)."""
    num_iterations: int = 1
    """Optimisation passes over each generation batch (GRPO's mu). 1 = strictly on-policy, ratio == 1."""
    loss_type: LossType = "bnpo"
    """Loss normalisation: grpo (per-sequence mean), bnpo (token mean per micro-batch; what the recipe's
    pinned TRL did), dr_grpo (sum / (rows * max_completion_length)), dapo (token mean over the global batch)."""
    beta: float = 0.04
    """KL coefficient against the frozen reference (k3 estimator). 0 = no reference model is loaded."""
    epsilon: float = 0.2
    """Lower clip range of the importance ratio."""
    epsilon_high: float | None = None
    """Upper clip range (DAPO clip-higher, e.g. 0.28); None = same as epsilon."""
    mask_truncated_completions: bool = False
    """Exclude completions that hit the length limit without EOS from the loss (DAPO overlong filtering)."""
    tis_cap: float | None = None
    """Truncated importance-sampling correction for the engine-vs-trainer log-prob mismatch: per-token
    weight min(exp(logp_old - logp_sampler), tis_cap). None = off (the recipe)."""
    logprob_chunk_size: int = 2
    """Rows per forward when computing log-probs, bounding the logits held in memory at once."""

    def __post_init__(self) -> None:
        if self.micro_batch_size < 1 or self.num_iterations < 1 or self.logprob_chunk_size < 1:
            raise ValueError("grpo.micro_batch_size, grpo.num_iterations and grpo.logprob_chunk_size must be >= 1")
        if self.beta < 0:
            raise ValueError(f"grpo.beta must be >= 0, got {self.beta}")
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise ValueError(f"grpo.epsilon_high ({self.epsilon_high}) must be >= grpo.epsilon ({self.epsilon})")

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

    def __post_init__(self) -> None:
        if self.lr <= 0 or not 0 <= self.warmup_ratio < 1 or not 0 <= self.min_lr_rate <= 1:
            raise ValueError("optim: need lr > 0, 0 <= warmup_ratio < 1 and 0 <= min_lr_rate <= 1")
