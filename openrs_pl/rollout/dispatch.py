"""Dedicated-device rollouts: rank 0 generates for every rank and hands each its own groups back.

This is the recipe's layout (trainer ranks on devices 0-2, one vLLM engine on device 3 inside rank 0's process):
every rank calls :func:`generate_on_rank_zero` with its own prompts; rank 0 gathers them, runs one engine call for
all (one big batch keeps the engine busy and lets prefix caching share each prompt's KV across its samples), and
scatters back to each rank the ``n`` consecutive completions of each of its prompts, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

from openrs_pl.rollout.engine import GenerationEngine
from openrs_pl.rollout.types import GenerationOutput, SamplingConfig


@dataclass(frozen=True)
class GenerationFailed:
    """What rank 0 scatters instead of completions when generation raised, so no rank waits forever."""

    message: str
    """``Type: message`` of the exception raised on rank 0."""


def split_output(output: GenerationOutput, prompts_per_rank: list[int], n: int) -> list[GenerationOutput]:
    """Cut one engine output for all ranks' prompts (concatenated in rank order) into one output per rank.

    Every piece keeps the output's ``weights_version`` and ``generation_s`` (one request, one set of weights).

    >>> out = GenerationOutput([[1], [2], [3], [4], [5], [6]], [True] * 6, [[-0.1]] * 6)
    >>> [o.completion_ids for o in split_output(out, [2, 1], n=2)]
    [[[1], [2], [3], [4]], [[5], [6]]]
    >>> versioned = GenerationOutput([[1], [2], [3], [4]], [True] * 4, weights_version=3, generation_s=0.5)
    >>> [(o.weights_version, o.generation_s) for o in split_output(versioned, [1, 1], n=2)]
    [(3, 0.5), (3, 0.5)]
    """
    expected = sum(prompts_per_rank) * n
    if len(output.completion_ids) != expected:
        raise ValueError(f"engine returned {len(output.completion_ids)} completions, expected {expected}")
    pieces: list[GenerationOutput] = []
    start = 0
    for count in prompts_per_rank:
        stop = start + count * n
        pieces.append(output.rows(range(start, stop)))
        start = stop
    return pieces


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _generate_for_all(
    engine: GenerationEngine | None, per_rank: list[list[list[int]]], sampling: SamplingConfig
) -> list[GenerationOutput]:
    if engine is None:
        raise ValueError("rank 0 has no generation engine; the dedicated mode builds it on rank 0")
    flat = [prompt for prompts in per_rank for prompt in prompts]
    return split_output(engine.generate(flat, sampling), [len(prompts) for prompts in per_rank], sampling.n)


def generate_on_rank_zero(
    engine: GenerationEngine | None, prompt_ids: list[list[int]], sampling: SamplingConfig
) -> GenerationOutput:
    """Generate this rank's completions with the engine that lives on rank 0.

    Collective: every rank of the default process group must call it (other ranks pass ``engine=None``).
    Without an initialised multi-process group it is just ``engine.generate``. If generation raises on rank 0,
    every rank raises a ``RuntimeError`` naming the error instead of waiting on the collective.

    Args:
        engine: the engine on rank 0; ignored on other ranks.
        prompt_ids: this rank's prompts as token ids.
        sampling: this rank's sampling settings; rank 0 uses its own for the whole gathered batch (so the other
            ranks' seeds are ignored in this mode).

    Returns:
        ``sampling.n`` completions per prompt of this rank, grouped per prompt in order.
    """
    if not _is_distributed():
        if engine is None:
            raise ValueError("generate_on_rank_zero needs an engine when not running distributed")
        return engine.generate(prompt_ids, sampling)

    rank, world_size = dist.get_rank(), dist.get_world_size()
    gathered: list[list[list[int]]] | None = [[] for _ in range(world_size)] if rank == 0 else None
    dist.gather_object(prompt_ids, gathered, dst=0)

    pieces: list[GenerationOutput | GenerationFailed] | None = None
    error: Exception | None = None
    if rank == 0:
        assert gathered is not None
        try:
            pieces = list(_generate_for_all(engine, gathered, sampling))
        except Exception as exc:  # every rank must leave the collective, so the error travels with the scatter
            error = exc
            pieces = [GenerationFailed(f"{type(exc).__name__}: {exc}")] * world_size
    received: list[GenerationOutput | GenerationFailed | None] = [None]
    dist.scatter_object_list(received, pieces, src=0)

    mine = received[0]
    if isinstance(mine, GenerationFailed):
        raise RuntimeError(f"generation failed on rank 0: {mine.message}") from error
    assert isinstance(mine, GenerationOutput)
    return mine
