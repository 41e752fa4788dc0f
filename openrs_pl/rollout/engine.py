"""The generation-engine interface. Engines turn token-id prompts into sampled completions."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import nn

from openrs_pl.rollout.types import GenerationOutput, SamplingConfig


@runtime_checkable
class GenerationEngine(Protocol):
    """Anything that can sample completions for prompts and take the policy's new weights."""

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> GenerationOutput:
        """Sample ``sampling.n`` completions for each prompt (grouped per prompt, in order)."""
        ...

    def sync_weights(self, policy: nn.Module) -> None:
        """Make the engine sample from ``policy``'s current weights."""
        ...
