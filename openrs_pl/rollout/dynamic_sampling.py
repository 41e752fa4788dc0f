"""DAPO dynamic sampling: keep only prompt groups whose rewards disagree, drawing more prompts to refill the batch.

DAPO (Yu et al. 2025, arXiv 2503.14476, §3.2, eq. 11) constrains ``0 < |{o_i correct}| < G``: a group whose G
rewards are all equal has zero advantage everywhere, so it adds no policy gradient and only dilutes the batch
(with a token-mean loss it shrinks every other token's weight). Dynamic sampling drops such groups and draws
further prompt batches until the batch holds as many informative groups as it started with. Draws are bounded
(``max_draws``); when they run out, the batch is topped up with the dropped zero-signal groups, so its size,
and the micro-batch layout, never change.

The functions here are pure over :class:`ScoredGroups`; :class:`~openrs_pl.rollout.callback.RolloutCallback`
supplies the ``draw`` callable (sample and score one more prompt batch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from openrs_pl.rollout.types import GenerationOutput, PromptBatch


@dataclass(frozen=True)
class ScoredGroups:
    """Prompts with their G sampled completions and rewards, before advantages: ``M`` prompts, ``N = M * G``."""

    batch: PromptBatch
    """The ``M`` prompts with their dataset columns."""
    generation: GenerationOutput
    """``N`` completions, the G of a prompt consecutive."""
    rewards: Tensor
    """``[N]`` weighted reward."""
    per_func: Tensor
    """``[N, R]`` reward per function."""

    @property
    def num_groups(self) -> int:
        return len(self.batch)

    def select(self, groups: list[int]) -> ScoredGroups:
        """The groups (prompts) at ``groups``, in that order."""
        g = self.rewards.numel() // max(self.num_groups, 1)
        rows = [i * g + j for i in groups for j in range(g)]
        return ScoredGroups(
            batch=self.batch.select(groups),
            generation=self.generation.rows(rows),
            rewards=self.rewards[rows],
            per_func=self.per_func[rows],
        )

    def __add__(self, other: ScoredGroups) -> ScoredGroups:
        return ScoredGroups(
            batch=self.batch + other.batch,
            generation=self.generation + other.generation,
            rewards=torch.cat([self.rewards, other.rewards]),
            per_func=torch.cat([self.per_func, other.per_func]),
        )


def informative_groups(rewards: Tensor, num_generations: int) -> list[int]:
    """Indices of the groups whose G rewards are not all equal (DAPO's ``0 < #correct < G``, for any reward).

    >>> informative_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0]), num_generations=2)
    [1]
    """
    grouped = rewards.view(-1, num_generations)  # [M, G]
    return (grouped != grouped[:, :1]).any(dim=1).nonzero().flatten().tolist()


@dataclass(frozen=True)
class DynamicSamplingStats:
    """What one step of dynamic sampling did (logged as ``train/dynamic_sampling/*``)."""

    draws: int
    """Extra prompt batches drawn after the first."""
    prompts_drawn: int
    """Prompts sampled in total, the first batch included."""
    informative: int
    """Informative groups found in total."""
    filled_with_zero_signal: int
    """Groups of the final batch that are zero-signal fillers (draws ran out)."""


def fill_informative(
    first: ScoredGroups,
    draw: Callable[[], ScoredGroups],
    num_generations: int,
    max_draws: int,
    keep_drawing: Callable[[int], bool] = lambda missing: missing > 0,
) -> tuple[ScoredGroups, DynamicSamplingStats]:
    """Replace ``first``'s zero-signal groups with informative ones from up to ``max_draws`` further draws.

    Args:
        first: The step's prompt batch, scored.
        draw: Samples and scores one more prompt batch.
        num_generations: G.
        max_draws: Bound on calls to ``draw``.
        keep_drawing: Given this rank's number of missing groups, whether to draw again. In multi-process runs it
            must return the same on every rank (generation may be a collective), e.g. "any rank misses some".

    Returns:
        ``first.num_groups`` groups, informative ones first (in the order found), then zero-signal fillers if the
        draws ran out; and the :class:`DynamicSamplingStats`.
    """
    target = first.num_groups
    kept = informative_groups(first.rewards, num_generations)
    informative = first.select(kept)
    spare = first.select([i for i in range(target) if i not in set(kept)])
    draws, drawn = 0, target
    while draws < max_draws and keep_drawing(max(target - informative.num_groups, 0)):
        more = draw()
        draws, drawn = draws + 1, drawn + more.num_groups
        kept = informative_groups(more.rewards, num_generations)
        informative = informative + more.select(kept)
        spare = spare + more.select([i for i in range(more.num_groups) if i not in set(kept)])
    fillers = max(target - informative.num_groups, 0)
    batch = informative.select(list(range(min(target, informative.num_groups))))
    if fillers:
        batch = batch + spare.select(list(range(fillers)))
    stats = DynamicSamplingStats(
        draws=draws, prompts_drawn=drawn, informative=informative.num_groups, filled_with_zero_signal=fillers
    )
    return batch, stats


def prompt_batches(
    rows: list[dict[str, Any]], batch_size: int, rank: int, world_size: int, seed: int
) -> Iterator[PromptBatch]:
    """Endless shuffled prompt batches of this rank's shard, an independent stream from the training loader's.

    Its own seed keeps the extra prompts from repeating the ones the main loader is about to hand out.
    """
    sampler: DistributedSampler = DistributedSampler(
        rows,  # type: ignore[arg-type]  # a list is a map-style dataset
        num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True,
    )  # fmt: skip
    loader: DataLoader = DataLoader(
        rows,  # type: ignore[arg-type]
        batch_size=batch_size, sampler=sampler, drop_last=True, collate_fn=PromptBatch.from_rows,
    )  # fmt: skip
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1
