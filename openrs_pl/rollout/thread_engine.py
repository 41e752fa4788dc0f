"""An in-process asynchronous engine: a generation engine driven from a background thread.

Overlapped rollouts without a second process: the thread decodes step t+1's prompts while the trainer's thread
trains step t (PyTorch releases the GIL inside its kernels, so both run at once on different cores). One FIFO worker
runs requests and weight pushes in the order they were made (the :class:`AsyncGenerationEngine` contract).

Two engines run in the thread, and their pushes differ:

* :meth:`ThreadEngine.on_copy`: an :class:`HFEngine` on a private copy of the policy. A push clones the policy's
  tensors on the caller's thread, so the trainer may change its weights right after, and the worker copies the clone
  into its model between two requests: neither side waits for anything but that copy. The copy is a whole second
  model in the trainer's memory, so this engine is for single-device or DDP trainers and models that fit twice.
* :meth:`ThreadEngine.around`: an engine with weights of its own (vLLM's). A push runs the engine's
  ``sync_weights`` on the worker, straight from the live policy, and the caller waits for it: no snapshot is held,
  and a push queued behind a request waits for that request (with overlap, the next step's generation, which is
  usually done by the time its step has trained).

With a ``scorer`` (``rollout.score_reference``) the thread also scores each request's completions under the frozen
reference right after sampling them, so the training step that takes them has no reference pass of its own: one
forward pass per step moves from the trainer's critical path into the generator's idle time.
"""

from __future__ import annotations

import copy
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import cast

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from openrs_pl.rollout.engine import GenerationEngine
from openrs_pl.rollout.hf_engine import HFEngine
from openrs_pl.rollout.types import GenerationOutput, PolicySource, ReferenceScorer, SamplingConfig, per_completion


class ThreadEngine:
    """Samples in a background thread with ``engine``, whose weights change only through :meth:`sync_weights`.

    Args:
        engine: the sampler, used from the worker thread only from now on.
        mirror: the module ``engine`` samples from, when it is a copy of the policy (pushes then load a snapshot
            into it without waiting); ``None``: pushes call ``engine.sync_weights`` and wait for it.
        num_threads: torch threads of the worker thread (CPU); ``None``: as many as the caller's.
        sync_every: without a mirror, push on every ``sync_every``-th :meth:`sync_weights` call (or when ``force``),
            the wrapped engine's own setting: the skipping is decided here and the engine is always forced, so the
            versions count only pushes that reached it.
        scorer: scores every request's completions under the frozen reference on the worker thread, into
            :attr:`GenerationOutput.ref_logprobs` (its time counts in ``generation_s``); ``None``: no scoring.
    """

    def __init__(
        self,
        engine: GenerationEngine,
        mirror: nn.Module | None = None,
        num_threads: int | None = None,
        sync_every: int = 1,
        scorer: ReferenceScorer | None = None,
    ):
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"generation threads must be >= 1, got {num_threads}")
        if sync_every < 1:
            raise ValueError(f"sync_every must be >= 1, got {sync_every}")
        self._engine = engine
        self._mirror = mirror
        self._scorer = scorer
        self._sync_every = sync_every
        self._sync_calls = 0
        # torch._C.set_num_threads: vLLM's CPU worker replaces torch.set_num_threads with a no-op.
        initializer = None if num_threads is None else (lambda: torch._C.set_num_threads(num_threads))
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="openrs-generation", initializer=initializer)
        self._requests: dict[int, Future[GenerationOutput]] = {}
        self._tickets = 0
        self._pushes = 0  # pushes made (caller's side)
        self._applied = 0  # pushes the worker has applied (worker's side)
        self._push_error: BaseException | None = None

    @classmethod
    def on_copy(
        cls,
        policy: nn.Module,
        eos_token_id: int,
        pad_token_id: int,
        batch_size: int | None = None,
        num_threads: int | None = None,
        scorer: ReferenceScorer | None = None,
    ) -> ThreadEngine:
        """An HF engine on a private copy of ``policy`` (its weights now are weights version 0)."""
        mirror = copy.deepcopy(policy).eval().requires_grad_(False)
        engine = HFEngine(cast(PreTrainedModel, mirror), eos_token_id, pad_token_id, batch_size, logprobs=True)
        return cls(engine, mirror, num_threads, scorer=scorer)

    @classmethod
    def for_policy(
        cls,
        source: PolicySource,
        batch_size: int | None = None,
        num_threads: int | None = None,
        scorer: ReferenceScorer | None = None,
    ) -> ThreadEngine:
        """:meth:`on_copy` of a trainer's policy, with its tokenizer's EOS and padding ids."""
        tokenizer = source.tokenizer
        return cls.on_copy(source.policy, tokenizer.eos_token_id, source.pad_token_id, batch_size, num_threads, scorer)

    @classmethod
    def around(
        cls,
        engine: GenerationEngine,
        num_threads: int | None = None,
        sync_every: int = 1,
        scorer: ReferenceScorer | None = None,
    ) -> ThreadEngine:
        """``engine`` (holding weights of its own, e.g. vLLM's) driven from the background thread."""
        return cls(engine, None, num_threads, sync_every, scorer)

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
        """Push the policy's current weights; requests submitted from now on sample with them.

        With a mirror the push is queued (``force`` moot); without one the caller waits until the engine has synced.
        """
        self._sync_calls += 1
        if self._mirror is None and not force and self._sync_calls % self._sync_every != 0:
            return
        self._pushes += 1
        if self._mirror is None:
            self._worker.submit(self._sync, policy).result()
            return
        snapshot = {name: value.detach().clone() for name, value in policy.state_dict().items()}
        self._worker.submit(self._load, snapshot)

    def sleep(self) -> None:
        """Nothing to release: the engine stays resident (sleeping would stall the overlap)."""

    def wake_up(self) -> None:
        """Nothing to restore."""

    def close(self) -> None:
        """Drop queued requests and pushes, wait for the one being decoded (bounded by ``max_tokens``), stop."""
        self._worker.shutdown(wait=True, cancel_futures=True)
        self._requests.clear()
        self._engine.close()

    # ------------------------------------------------------------------------------------- worker thread
    def _load(self, snapshot: dict[str, Tensor]) -> None:
        assert self._mirror is not None
        try:
            self._mirror.load_state_dict(snapshot)
        except BaseException as err:  # surfaces with the next request instead of vanishing in an unread future
            self._push_error = err
            raise
        self._applied += 1

    def _sync(self, policy: nn.Module) -> None:
        self._engine.sync_weights(policy, force=True)  # an error reaches the caller, who waits for this push
        self._applied += 1

    def _generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> GenerationOutput:
        if self._push_error is not None:
            raise RuntimeError("a weight push into the generation thread failed") from self._push_error
        output = replace(self._engine.generate(prompt_ids, sampling), weights_version=self._applied)
        if self._scorer is None:
            return output
        began = time.perf_counter()
        ref_logprobs = self._scorer(per_completion(prompt_ids, sampling.n), output.completion_ids)
        busy = None if output.generation_s is None else output.generation_s + time.perf_counter() - began
        return replace(output, ref_logprobs=ref_logprobs, generation_s=busy)
