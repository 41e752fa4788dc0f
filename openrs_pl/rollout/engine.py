"""The generation-engine interfaces. Engines turn token-id prompts into sampled completions.

:class:`GenerationEngine` is the synchronous contract every engine meets. :class:`AsyncGenerationEngine` adds
background generation (requests queue up and run while the trainer trains), which overlapped rollouts need.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import nn

from openrs_pl.rollout.types import GenerationOutput, SamplingConfig


@runtime_checkable
class GenerationEngine(Protocol):
    """Anything that can sample completions for prompts and take the policy's new weights.

    Engines for which an operation is meaningless implement it as a no-op (the HF engine samples from the policy
    module itself, so it never syncs, sleeps or closes anything).
    """

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> GenerationOutput:
        """Sample ``sampling.n`` completions for each prompt (grouped per prompt, in order)."""
        ...

    def sync_weights(self, policy: nn.Module, force: bool = False) -> None:
        """Make the engine sample from ``policy``'s current weights (an engine may skip calls, unless ``force``)."""
        ...

    def sleep(self) -> None:
        """Release the engine's device memory until the next :meth:`generate` (colocated engines)."""
        ...

    def wake_up(self) -> None:
        """Undo :meth:`sleep`."""
        ...

    def close(self) -> None:
        """Shut the engine down (the trainer's process group stays alive)."""
        ...


@runtime_checkable
class AsyncGenerationEngine(GenerationEngine, Protocol):
    """An engine that generates in the background, e.g. in its own process.

    Requests and weight pushes are applied in the order they are made: a request submitted after
    :meth:`sync_weights` is sampled with the pushed weights. ``generate`` equals ``collect(submit(...))``.
    """

    @property
    def weights_version(self) -> int:
        """Weight pushes made so far (0 = the weights the engine started with)."""
        ...

    def submit(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> int:
        """Queue a request without waiting for it; returns a ticket for :meth:`collect`."""
        ...

    def collect(self, ticket: int) -> GenerationOutput:
        """Wait for a submitted request; its ``weights_version`` says which weights sampled it."""
        ...
