"""Typed containers and interfaces between the DataModule, the generation engine, the rollout callback and the GRPO
module.

This is the bottom of the data -> rollout -> grpo seam: all three packages import it, it imports none of them
(which is why :class:`PromptBatch`, built by the data side and carrying a :class:`RolloutBatch`, lives here).
Data flows one way, DataModule (a :class:`PromptBatch`) -> :class:`~openrs_pl.rollout.callback.RolloutCallback`
(engine, rewards, advantages; it attaches a :class:`RolloutBatch` to the :class:`PromptBatch`) -> the GRPO module
(log-probs, loss, optimizer). The only thing the rollout side reads from the module is a :class:`PolicySource`.

Shape notation: ``N`` = completions in the batch (= prompts x G, grouped so that the G completions of one
prompt are consecutive), ``P`` = padded prompt length, ``L`` = padded completion length, ``R`` = reward functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import Tensor, nn


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


T = TypeVar("T")


def per_completion(per_prompt: Sequence[T], n: int) -> list[T]:
    """One entry per completion from one per prompt: each repeated ``n`` times, consecutively, as the ``n``
    completions of a prompt sit in a batch (completion ``i`` belongs to prompt ``i // n``).

    >>> per_completion(["a", "b"], 3)
    ['a', 'a', 'a', 'b', 'b', 'b']
    """
    return [value for value in per_prompt for _ in range(n)]


ReferenceScorer = Callable[[list[list[int]], list[list[int]]], list[list[float]]]
"""``(prompt_ids, completion_ids) -> log-probs``: the frozen reference's log-prob of each token of completion ``i``
as a continuation of ``prompt_ids[i]`` (one prompt per completion, no padding), at the sampling temperature."""


@runtime_checkable
class ReferenceSource(Protocol):
    """A trained module that hands its frozen reference's scoring to the rollout side (``rollout.score_reference``)."""

    def reference_scorer(self) -> ReferenceScorer | None:
        """Scores completions under the frozen reference exactly as the training step would; ``None`` when the
        objective has no reference (``beta = 0``). Safe to call from another thread: the reference is never trained."""
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
    trainer trains, so it can differ from how long the trainer waited for them), scoring by the reference included
    when the engine did that too; ``None`` if not measured."""
    ref_logprobs: list[list[float]] | None = None
    """The frozen reference's log-prob of each generated token, when the generation thread scored them
    (``rollout.score_reference``); the training step then skips its own reference pass."""

    def rows(self, indices: Iterable[int]) -> GenerationOutput:
        """The completions at ``indices``, in that order, with each of their per-completion fields; the request's
        ``weights_version`` and ``generation_s`` are kept.

        >>> out = GenerationOutput([[1], [2, 3]], [True, False], [[-0.1], [-0.2, -0.3]], weights_version=2)
        >>> picked = out.rows([1])
        >>> picked.completion_ids, picked.finished, picked.logprobs, picked.ref_logprobs, picked.weights_version
        ([[2, 3]], [False], [[-0.2, -0.3]], None, 2)
        """
        picked = list(indices)

        def pick(values: list[Any] | None) -> Any:
            return None if values is None else [values[i] for i in picked]

        return replace(
            self,
            completion_ids=pick(self.completion_ids),
            finished=pick(self.finished),
            logprobs=pick(self.logprobs),
            ref_logprobs=pick(self.ref_logprobs),
        )

    def __add__(self, other: GenerationOutput) -> GenerationOutput:
        """Both outputs' completions, ``self``'s first; a per-token field only if both have it; no request fields.

        >>> both = GenerationOutput([[1]], [True], [[-0.1]]) + GenerationOutput([[2]], [False], [[-0.2]])
        >>> both.completion_ids, both.finished, both.logprobs, both.weights_version
        ([[1], [2]], [True, False], [[-0.1], [-0.2]], None)
        """

        def cat(a: list[list[float]] | None, b: list[list[float]] | None) -> list[list[float]] | None:
            return None if a is None or b is None else a + b

        return GenerationOutput(
            completion_ids=self.completion_ids + other.completion_ids,
            finished=self.finished + other.finished,
            logprobs=cat(self.logprobs, other.logprobs),
            ref_logprobs=cat(self.ref_logprobs, other.ref_logprobs),
        )


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


@dataclass
class PromptBatch:
    """One step's prompts on one rank, as the DataModule hands them out; the rollout callback adds their rollout.

    Mutable on purpose: Lightning passes the same object to ``on_train_batch_start`` and ``training_step``, so the
    callback attaches the rollout in place; and Lightning's device transfer (``apply_to_collection``) rebuilds
    dataclasses field by field, which it refuses for frozen ones. It holds no tensors until the rollout is attached
    (after the transfer), so the transfer moves nothing; DDP and DeepSpeed hand a dataclass to the module as it is.

    >>> batch = PromptBatch.from_rows([{"prompt_ids": [1, 2], "answer": "3"}, {"prompt_ids": [4], "answer": "5"}])
    >>> batch.prompt_ids, batch.columns, len(batch)
    ([[1, 2], [4]], {'answer': ['3', '5']}, 2)
    >>> (batch.select([1]) + batch.select([0])).columns
    {'answer': ['5', '3']}
    """

    prompt_ids: list[list[int]]
    """Token ids of each prompt (unpadded, so of different lengths)."""
    columns: dict[str, list[Any]] = field(default_factory=dict)
    """The dataset's other columns, one entry per prompt (``prompt``, ``problem``, ``answer``, ...): the reward
    functions receive them, one entry per completion, as keyword arguments (``prompt`` as their ``prompts``)."""
    next_prompt_ids: list[list[int]] | None = None
    """The next batch's ``prompt_ids`` when the DataModule looks ahead (overlapped rollouts generate them a step
    early); ``[]`` after an epoch's last batch, ``None`` without lookahead."""
    rollout: RolloutBatch | None = None
    """This batch's completions, rewards and advantages, set by the rollout callback before ``training_step``."""

    def __len__(self) -> int:
        """The number of prompts."""
        return len(self.prompt_ids)

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]]) -> PromptBatch:
        """Collate dataset rows (each with ``prompt_ids``) into a batch: the DataLoader's ``collate_fn``.

        The values stay Python objects (no tensors: prompts have ragged lengths); a column some rows lack is
        ``None`` for them.
        """
        keys = dict.fromkeys(key for row in rows for key in row if key != "prompt_ids")
        return cls([row["prompt_ids"] for row in rows], {key: [row.get(key) for row in rows] for key in keys})

    def select(self, indices: Sequence[int]) -> PromptBatch:
        """The prompts at ``indices``, in that order, with their columns (the lookahead and the rollout describe a
        whole batch, so they are not carried over)."""
        return PromptBatch(
            [self.prompt_ids[i] for i in indices], {k: [v[i] for i in indices] for k, v in self.columns.items()}
        )

    def __add__(self, other: PromptBatch) -> PromptBatch:
        """Both batches' prompts and columns, ``self``'s first (without lookahead or rollout, as :meth:`select`)."""
        return PromptBatch(
            self.prompt_ids + other.prompt_ids, {k: v + other.columns[k] for k, v in self.columns.items()}
        )
