"""Overlapped rollouts: the next step's completions are generated while the current step trains.

Per step t (``rollout.overlap``): take step t's completions, which were requested before step t-1 trained, submit
step t+1's prompts at once, then score and train step t while the engine decodes t+1. After the step the new
weights are pushed; the engine applies requests and pushes in order, so step t+1's completions were sampled by the
weights from before step t: one update old. The policy version counts training steps (weight pushes, one per step).

Staleness = policy version now - version that sampled the completions. Completions staler than ``max_staleness``
are not trained on: they are generated again with the newest weights (an engine that applies pushes late, or a
``max_staleness`` of 0). The completions in flight are part of the training state: a checkpoint waits for them and
stores them, so a resumed run trains on exactly what the uninterrupted run would have.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from openrs_pl.rollout.engine import AsyncGenerationEngine
from openrs_pl.rollout.types import GenerationOutput, SamplingConfig


@dataclass(frozen=True)
class Prefetched:
    """Completions requested ahead of their step, in flight (``ticket``) or at hand (``output``)."""

    step: int
    """The training step (policy version) whose prompts these are."""
    prompt_ids: list[list[int]]
    ticket: int | None = None
    output: GenerationOutput | None = None
    sampled_by: int | None = None
    """Policy version that sampled ``output`` (known once collected)."""


class OverlappedRollouts:
    """Keeps one request in flight on an :class:`AsyncGenerationEngine` and enforces the staleness bound.

    Args:
        engine: the asynchronous engine.
        max_staleness: most policy versions a trained-on completion may lag behind the policy.
        policy_version: the version of the weights the engine holds now.
    """

    def __init__(self, engine: AsyncGenerationEngine, max_staleness: int, policy_version: int = 0) -> None:
        if max_staleness < 0:
            raise ValueError(f"rollout.max_staleness must be >= 0, got {max_staleness}")
        self.engine = engine
        self.max_staleness = max_staleness
        self._version_of = {engine.weights_version: policy_version}  # engine weights_version -> policy version
        self._pending: Prefetched | None = None
        self.discarded = 0
        """Prefetched batches not trained on (too stale, or for other prompts)."""

    def push(self, policy: nn.Module, policy_version: int) -> None:
        """Send the policy's weights (``policy_version``) to the engine, after every request made so far."""
        self.engine.sync_weights(policy, force=True)
        self._version_of[self.engine.weights_version] = policy_version

    def prefetch(self, step: int, prompt_ids: list[list[int]], sampling: SamplingConfig) -> None:
        """Request the completions of step ``step`` now, to be taken by :meth:`take` at that step."""
        self._drop_pending()
        self._pending = Prefetched(step, prompt_ids, ticket=self.engine.submit(prompt_ids, sampling))

    def take(
        self, step: int, prompt_ids: list[list[int]], sampling: SamplingConfig, policy_version: int
    ) -> tuple[GenerationOutput, int]:
        """Step ``step``'s completions and their staleness: the prefetched ones if they are for these prompts and
        at most ``max_staleness`` versions old, else freshly generated ones (staleness 0)."""
        pending = self._resolved()
        self._pending = None
        if pending is not None and pending.step == step and pending.prompt_ids == prompt_ids:
            assert pending.output is not None and pending.sampled_by is not None
            staleness = policy_version - pending.sampled_by
            if staleness <= self.max_staleness:
                return pending.output, staleness
        if pending is not None:
            self.discarded += 1
        output = self.engine.generate(prompt_ids, sampling)
        return output, policy_version - self._sampled_by(output)

    def state_dict(self) -> dict[str, Any]:
        """The request in flight, waited for: a checkpoint holds the completions the next step trains on."""
        pending = self._resolved()
        if pending is None:
            return {}
        assert pending.output is not None
        return {
            "step": pending.step,
            "prompt_ids": pending.prompt_ids,
            "output": asdict(pending.output),
            "sampled_by": pending.sampled_by,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        output = GenerationOutput(**state["output"])
        self._pending = Prefetched(state["step"], state["prompt_ids"], output=output, sampled_by=state["sampled_by"])

    def close(self) -> None:
        self._pending = None

    def _resolved(self) -> Prefetched | None:
        """The pending request with its completions collected (waits for them)."""
        pending = self._pending
        if pending is not None and pending.output is None:
            assert pending.ticket is not None
            output = self.engine.collect(pending.ticket)
            pending = Prefetched(pending.step, pending.prompt_ids, output=output, sampled_by=self._sampled_by(output))
            self._pending = pending
        return pending

    def _drop_pending(self) -> None:
        if self._pending is not None:
            self._resolved()  # the engine must hand it out before a new request can be matched to its step
            self.discarded += 1
            self._pending = None

    def _sampled_by(self, output: GenerationOutput) -> int:
        if output.weights_version is None:
            raise ValueError("rollout.overlap: the engine did not report which weights sampled a request")
        return self._version_of[output.weights_version]
