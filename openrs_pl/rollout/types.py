"""Typed containers and interfaces between the generation engine, the rollout callback and the GRPO module.

This is the bottom of the rollout <-> grpo seam: both packages import it, it imports neither. Data flows one way,
DataModule (prompts) -> :class:`~openrs_pl.rollout.callback.RolloutCallback` (engine, rewards, advantages)
-> :class:`RolloutBatch` -> the GRPO module (log-probs, loss, optimizer). The only thing the rollout side reads
from the module is a :class:`PolicySource`.

Shape notation: ``N`` = completions in the batch (= prompts x G, grouped so that the G completions of one
prompt are consecutive), ``P`` = padded prompt length, ``L`` = padded completion length, ``R`` = reward functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

ROLLOUT_KEY = "rollout"
"""The key under which the rollout callback puts the :class:`RolloutBatch` into the DataModule's batch dict."""


@runtime_checkable
class PolicySource(Protocol):
    """What the rollout side needs from the trained module: the model to sample from and how to decode it."""

    @property
    def policy(self) -> nn.Module:
        """The policy being trained (an HF causal LM; the HF engine samples from it, vLLM copies its weights)."""
        ...

    @property
    def tokenizer(self) -> Any:
        """The policy's tokenizer (decodes completions for the reward functions)."""
        ...

    @property
    def pad_token_id(self) -> int:
        """Padding id for prompts and completions."""
        ...

    @property
    def name_or_path(self) -> str:
        """Where the policy's initial weights come from (a separate engine such as vLLM loads them too)."""
        ...


@dataclass(frozen=True)
class SamplingConfig:
    """How completions are sampled. Defaults are the Open-RS training values."""

    n: int = 6
    """Completions per prompt (the GRPO group size G)."""
    temperature: float = 0.7
    """Sampling temperature; log-probs for the loss are computed at the same temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off, as in the recipe)."""
    top_k: int = 0
    """Top-k sampling (0 = off)."""
    max_tokens: int = 3584
    """Maximum completion length in tokens."""
    seed: int | None = None
    """Seed for this request; ``None`` leaves the engine's generator as it is."""


@dataclass(frozen=True)
class GenerationOutput:
    """What an engine returns for ``len(prompts)`` prompts with ``n`` samples each.

    ``completion_ids[i * n + j]`` is the j-th sample of prompt i, without padding, ending with EOS
    when the model stopped by itself (``finished[k]``) and cut at ``max_tokens`` otherwise.
    """

    completion_ids: list[list[int]]
    """Token ids of each completion (no prompt, no padding)."""
    finished: list[bool]
    """True when the completion ended with EOS, False when it hit ``max_tokens``."""
    logprobs: list[list[float]] | None = None
    """Sampler log-prob of each generated token, when the engine reports them (vLLM)."""
    weights_version: int | None = None
    """How many weight pushes the engine had applied when it sampled these (asynchronous engines report it; the
    rollout side turns it into the number of optimizer steps the samples lag behind the policy)."""
    generation_s: float | None = None
    """Wall seconds the engine's sampling of these took, on the engine's side (with overlap it runs while the
    trainer trains, so it can differ from how long the trainer waited for them); ``None`` if not measured."""


@dataclass(frozen=True)
class RolloutBatch:
    """One generation batch of a rank, ready for the GRPO loss."""

    prompt_ids: Tensor  # [N, P] long, left-padded
    prompt_mask: Tensor  # [N, P] long, 1 on real prompt tokens
    completion_ids: Tensor  # [N, L] long, right-padded
    completion_mask: Tensor  # [N, L] long, 1 up to and including the first EOS (0 on padding)
    rewards: Tensor  # [N] float, weighted sum of the reward functions
    reward_per_func: Tensor  # [N, R] float, unweighted value of each reward function (NaN = not applicable)
    advantages: Tensor  # [N] float, group-relative advantages
    truncated: Tensor  # [N] bool, completion hit max_tokens without EOS
    old_logprobs: Tensor | None = None  # [N, L] float, policy log-probs at sampling time (num_iterations > 1)
    sampler_logprobs: Tensor | None = None  # [N, L] float, log-probs reported by the engine (vLLM)
    ref_logprobs: Tensor | None = None  # [N, L] float, frozen reference log-probs (beta > 0)
    staleness: Tensor | None = None  # [N] long, policy updates since the sampling weights (overlapped rollouts)

    @property
    def num_completions(self) -> int:
        return self.completion_ids.shape[0]

    def micro_batches(self, size: int) -> Iterator[RolloutBatch]:
        """Consecutive slices of ``size`` completions each (the last may be shorter)."""
        for start in range(0, self.num_completions, size):
            yield self.select(slice(start, start + size))

    def select(self, index: slice | Tensor) -> RolloutBatch:
        """The rows ``index`` of every tensor field."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v[index] for k, v in values.items() if isinstance(v, Tensor)})

    def to(self, device: torch.device | str) -> RolloutBatch:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v.to(device) for k, v in values.items() if isinstance(v, Tensor)})


def rollout_from(batch: dict[str, Any]) -> RolloutBatch:
    """The :class:`RolloutBatch` the rollout callback attached to ``batch``; a clear error when none did."""
    rollout = batch.get(ROLLOUT_KEY)
    if not isinstance(rollout, RolloutBatch):
        raise RuntimeError("batch has no rollout: add openrs_pl.rollout.RolloutCallback to trainer.callbacks")
    return rollout
