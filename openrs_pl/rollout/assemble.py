"""Turn an engine's ragged output into the padded, masked tensors of a :class:`RolloutBatch`."""

from __future__ import annotations

import torch
from torch import Tensor

from openrs_pl.rollout.types import GenerationOutput, RolloutBatch, per_completion


def pad_left(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad to the longest sequence. Returns ids [N, P] and mask [N, P].

    >>> ids, mask = pad_left([[5, 6], [7]], pad_id=0)
    >>> ids.tolist(), mask.tolist()
    ([[5, 6], [0, 7]], [[1, 1], [0, 1]])
    """
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # [N, P]
    mask = torch.zeros((len(seqs), width), dtype=torch.long)  # [N, P]
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def pad_right(seqs: list[list[int]], pad_id: int, width: int | None = None) -> tuple[Tensor, Tensor]:
    """Right-pad to ``width`` (default: the longest). Returns ids [N, L] and mask [N, L].

    A completion needs at least one column, so an all-empty batch still gets width 1 (fully masked).

    >>> ids, mask = pad_right([[5], [7, 8]], pad_id=0)
    >>> ids.tolist(), mask.tolist()
    ([[5, 0], [7, 8]], [[1, 0], [1, 1]])
    """
    width = width if width is not None else max(max((len(s) for s in seqs), default=0), 1)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # [N, L]
    mask = torch.zeros((len(seqs), width), dtype=torch.long)  # [N, L]
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def assemble_rollout(
    prompt_ids: list[list[int]],
    generation: GenerationOutput,
    rewards: Tensor,
    reward_per_func: Tensor,
    advantages: Tensor,
    num_generations: int,
    pad_token_id: int,
) -> RolloutBatch:
    """Pad prompts (left) and completions (right) into a rollout batch.

    Args:
        prompt_ids: the distinct prompts, one list of ids each (each is repeated ``num_generations`` times).
        generation: the engine output, ``len(prompt_ids) * num_generations`` completions grouped per prompt.
        rewards: [N] weighted reward per completion.
        reward_per_func: [N, R] raw reward per function.
        advantages: [N] group-relative advantages.
        num_generations: group size G.
        pad_token_id: id used for padding (masked out everywhere).
    """
    n = len(prompt_ids) * num_generations
    if len(generation.completion_ids) != n:
        raise ValueError(f"engine returned {len(generation.completion_ids)} completions, expected {n}")
    p_ids, p_mask = pad_left(per_completion(prompt_ids, num_generations), pad_token_id)  # [N, P]
    c_ids, c_mask = pad_right(generation.completion_ids, pad_token_id)  # [N, L]
    return RolloutBatch(
        prompt_ids=p_ids,
        prompt_mask=p_mask,
        completion_ids=c_ids,
        completion_mask=c_mask,
        rewards=rewards.float(),
        reward_per_func=reward_per_func.float(),
        advantages=advantages.float(),
        truncated=torch.tensor([not f for f in generation.finished], dtype=torch.bool),
        sampler_logprobs=pad_logprobs(generation.logprobs, c_ids.shape[1]),
        ref_logprobs=pad_logprobs(generation.ref_logprobs, c_ids.shape[1]),
    )


def pad_logprobs(rows: list[list[float]] | None, width: int) -> Tensor | None:
    """Per-token log-probs, right-padded with 0 to ``width``: [N, L] float32, or ``None`` for ``None``.

    >>> pad_logprobs([[-0.5], [-1.0, -2.0]], width=3).tolist()
    [[-0.5, 0.0, 0.0], [-1.0, -2.0, 0.0]]
    """
    if rows is None:
        return None
    padded = torch.zeros((len(rows), width), dtype=torch.float32)  # [N, L]
    for i, row in enumerate(rows):
        padded[i, : len(row)] = torch.tensor(row, dtype=torch.float32)
    return padded
