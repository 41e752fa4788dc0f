"""An in-process asynchronous engine: an :class:`HFEngine` on its own copy of the policy, in a background thread.

Overlapped rollouts without a second process: the thread decodes step t+1's prompts while the trainer's thread
trains step t (PyTorch releases the GIL inside its kernels, so both run at once on different cores). One FIFO worker
runs requests and weight pushes in the order they were made (the :class:`AsyncGenerationEngine` contract). A push
clones the policy's tensors on the caller's thread, so the trainer may change its weights right after, and the
worker copies the clone into its model between two requests: generation waits for nothing but that copy.

The copy is a whole second model in the trainer's memory, so this engine is for single-device or DDP trainers
(not sharded ones) and models that fit twice.
"""

from __future__ import annotations

import copy
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import cast

from torch import Tensor, nn
from transformers import PreTrainedModel

from openrs_pl.rollout.hf_engine import HFEngine
from openrs_pl.rollout.types import GenerationOutput, PolicySource, SamplingConfig


class ThreadEngine:
    """Samples in a background thread from a private copy of the policy, updated only by :meth:`sync_weights`.

    Args:
        policy: the model to copy (its weights now are weights version 0).
        eos_token_id: token that ends a completion.
        pad_token_id: padding id for the batched prompts.
        batch_size: prompts per ``generate`` call (``None`` = all at once).
    """

    def __init__(self, policy: nn.Module, eos_token_id: int, pad_token_id: int, batch_size: int | None = None):
        model = copy.deepcopy(policy).eval().requires_grad_(False)
        self._engine = HFEngine(cast(PreTrainedModel, model), eos_token_id, pad_token_id, batch_size, logprobs=True)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="openrs-generation")
        self._requests: dict[int, Future[GenerationOutput]] = {}
        self._tickets = 0
        self._pushes = 0  # pushes made (caller's side)
        self._applied = 0  # pushes the worker has copied in (worker's side)
        self._push_error: BaseException | None = None

    @classmethod
    def for_policy(cls, source: PolicySource, batch_size: int | None = None) -> ThreadEngine:
        """An engine on a copy of a trainer's policy, with its tokenizer's EOS and padding ids."""
        return cls(source.policy, source.tokenizer.eos_token_id, source.pad_token_id, batch_size)

    @property
    def weights_version(self) -> int:
        return self._pushes

    def submit(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> int:
        ticket, self._tickets = self._tickets, self._tickets + 1
        self._requests[ticket] = self._worker.submit(self._generate, prompt_ids, sampling)
        return ticket

    def collect(self, ticket: int) -> GenerationOutput:
        return self._requests.pop(ticket).result()

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> GenerationOutput:
        return self.collect(self.submit(prompt_ids, sampling))

    def sync_weights(self, policy: nn.Module, force: bool = False) -> None:
        """Queue the policy's current weights; requests submitted from now on sample with them (``force`` moot)."""
        snapshot = {name: value.detach().clone() for name, value in policy.state_dict().items()}
        self._pushes += 1
        self._worker.submit(self._load, snapshot)

    def sleep(self) -> None:
        """Nothing to release: the copy stays resident (sleeping would stall the overlap)."""

    def wake_up(self) -> None:
        """Nothing to restore."""

    def close(self) -> None:
        """Drop queued requests and pushes, wait for the one being decoded (bounded by ``max_tokens``), stop."""
        self._worker.shutdown(wait=True, cancel_futures=True)
        self._requests.clear()

    # ------------------------------------------------------------------------------------- worker thread
    def _load(self, snapshot: dict[str, Tensor]) -> None:
        try:
            self._engine.model.load_state_dict(snapshot)
        except BaseException as err:  # surfaces with the next request instead of vanishing in an unread future
            self._push_error = err
            raise
        self._applied += 1

    def _generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> GenerationOutput:
        if self._push_error is not None:
            raise RuntimeError("a weight push into the generation thread failed") from self._push_error
        return replace(self._engine.generate(prompt_ids, sampling), weights_version=self._applied)
