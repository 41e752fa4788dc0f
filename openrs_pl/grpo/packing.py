"""Padding-free layout of a batch of prompt + completion pairs for the log-prob passes.

A padded batch ``[N, P + L]`` spends compute on every pad token: with a realistic spread of completion lengths most
of the ``N x L`` completion slots can be padding. :func:`pack_rows` instead lays the real tokens of whole sequences
side by side in rows of at most ``pack_tokens`` tokens, with position ids restarting at 0 for each sequence, so a
model forward sees no padding (:func:`~openrs_pl.grpo.logprobs.packed_completion_logprobs` runs it).

With ``share_prompts`` the completions that follow the same prompt (the G completions of a GRPO group sit in
consecutive rows) share one copy of it: a segment is ``prompt, completion_1, ..., completion_k`` with positions
continuing from the prompt length in each completion, and an explicit attention mask lets each completion token
attend to the prompt and to its own earlier tokens only. The prompt's hidden states are then computed once per
group instead of G times, and autograd sums the G completions' gradients through the shared copy.

Shape notation: ``N`` sequences, ``P``/``L`` padded prompt/completion lengths, ``T`` tokens in one packed row,
``K`` scored (completion) tokens in one packed row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PackedRow:
    """One padding-free forward: whole segments side by side."""

    input_ids: Tensor  # [1, T] long
    position_ids: Tensor  # [1, T] long, 0 at each segment's first prompt token, continuing through each completion
    attention_mask: Tensor | None  # [1, 1, T, T] bool, True = may attend; None = causal within each position-id run
    logit_index: Tensor  # [K] long, column whose logits predict each scored token
    targets: Tensor  # [1, K] long, the scored completion tokens
    rows: Tensor  # [K] long, the padded batch's row (sequence) of each scored token
    cols: Tensor  # [K] long, its position in that completion


@dataclass(frozen=True)
class PackedBatch:
    """Packed rows of a padded ``[N, L]`` completion batch, and the shape the log-probs are scattered back to."""

    rows: list[PackedRow]
    shape: tuple[int, int]  # (N, L)

    @property
    def num_tokens(self) -> int:
        """Tokens the model processes (the padded batch processes ``N x (P + L)``)."""
        return sum(row.input_ids.size(1) for row in self.rows)


@dataclass(frozen=True)
class _Segment:
    """A prompt followed by completions of it; without sharing, exactly one completion."""

    prompt: list[int]
    completions: list[tuple[int, list[int]]]  # (row in the padded batch, completion tokens)

    def __len__(self) -> int:
        return len(self.prompt) + sum(len(c) for _, c in self.completions)


def pack_rows(
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    pack_tokens: int,
    share_prompts: bool = False,
) -> PackedBatch:
    """Lay out the real tokens of each prompt + completion in rows of at most ``pack_tokens`` tokens, no padding.

    Segments are placed first-fit by decreasing length; a segment longer than ``pack_tokens`` gets a row of its
    own (sequences are never split). With ``share_prompts``, consecutive rows with the same prompt tokens form one
    segment (split into several when it would exceed ``pack_tokens``, each repeating the prompt).

    Args:
        prompt_ids: ``[N, P]`` prompts (any padding side).
        prompt_mask: ``[N, P]``, 1 on real prompt tokens.
        completion_ids: ``[N, L]`` completions.
        completion_mask: ``[N, L]``, 1 on the completion tokens to score (a prefix of each row).
        pack_tokens: Token budget of one row.
        share_prompts: Compute each run of identical prompts once.

    Returns:
        A :class:`PackedBatch` on ``completion_ids``'s device.
    """
    if pack_tokens < 1:
        raise ValueError(f"pack_tokens must be >= 1, got {pack_tokens}")
    prompts, completions = _real_tokens(prompt_ids, prompt_mask), _real_tokens(completion_ids, completion_mask)
    if any(not p for p in prompts):
        raise ValueError("every sequence needs at least one prompt token (it predicts the first completion token)")
    segments: list[_Segment] = []
    for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        last = segments[-1] if segments else None
        if share_prompts and last is not None and last.prompt == prompt and len(last) + len(completion) <= pack_tokens:
            last.completions.append((row, completion))
        else:
            segments.append(_Segment(prompt, [(row, completion)]))
    bins: list[list[_Segment]] = []
    for segment in sorted(segments, key=len, reverse=True):
        fitting = next((b for b in bins if sum(map(len, b)) + len(segment) <= pack_tokens), None)
        if fitting is None:
            bins.append([segment])
        else:
            fitting.append(segment)
    device = completion_ids.device
    packed = [_build_row(b, share_prompts, device) for b in bins]
    return PackedBatch(rows=packed, shape=(completion_ids.size(0), completion_ids.size(1)))


def _real_tokens(ids: Tensor, mask: Tensor) -> list[list[int]]:
    """Each row's tokens where ``mask`` is set, as Python lists (the layout is planned on the host)."""
    return [[t for t, m in zip(i, k, strict=True) if m] for i, k in zip(ids.tolist(), mask.tolist(), strict=True)]


def _build_row(segments: list[_Segment], explicit_mask: bool, device: torch.device) -> PackedRow:
    """Tokens, positions, mask and scoring indices of one packed row."""
    tokens: list[int] = []
    positions: list[int] = []
    segment_of: list[int] = []
    branch_of: list[int] = []  # 0 = the segment's prompt, b = its b-th completion
    logit_index: list[int] = []
    targets: list[int] = []
    rows: list[int] = []
    cols: list[int] = []
    for s, segment in enumerate(segments):
        prompt_len = len(segment.prompt)
        last_prompt_col = len(tokens) + prompt_len - 1
        tokens += segment.prompt
        positions += range(prompt_len)
        segment_of += [s] * prompt_len
        branch_of += [0] * prompt_len
        for b, (row, completion) in enumerate(segment.completions, start=1):
            start = len(tokens)
            tokens += completion
            positions += range(prompt_len, prompt_len + len(completion))
            segment_of += [s] * len(completion)
            branch_of += [b] * len(completion)
            # Completion token j is predicted by the column before it: the prompt's last token for j = 0.
            logit_index += [last_prompt_col, *range(start, start + len(completion) - 1)][: len(completion)]
            targets += completion
            rows += [row] * len(completion)
            cols += range(len(completion))
    mask = None
    if explicit_mask:
        seg = torch.tensor(segment_of, device=device)
        branch = torch.tensor(branch_of, device=device)
        col = torch.arange(len(tokens), device=device)
        # Query q may attend key k: same segment, k not after q, and k in the prompt or in q's own completion.
        mask = (seg[:, None] == seg[None, :]) & (col[None, :] <= col[:, None])
        mask &= (branch[None, :] == 0) | (branch[None, :] == branch[:, None])
        mask = mask[None, None]  # [1, 1, T, T]

    def long(values: list[int]) -> Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return PackedRow(
        input_ids=long(tokens)[None],
        position_ids=long(positions)[None],
        attention_mask=mask,
        logit_index=long(logit_index),
        targets=long(targets)[None],
        rows=long(rows),
        cols=long(cols),
    )
