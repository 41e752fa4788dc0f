"""``ProblemDataModule``: chat-formatted, tokenized prompts served in seeded, rank-disjoint batches.

Each batch is a :class:`~openrs_pl.rollout.types.PromptBatch`: the prompt ids and the dataset's other columns (which
the reward functions receive), plus, with ``lookahead``, the next batch's prompt ids.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any, Literal

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, DistributedSampler

from openrs_pl.data.prompts import OPENRS_SYSTEM_PROMPT, build_chat_prompt
from openrs_pl.data.sources import ColumnMap, OnBadRow, load_problems_with_stats, log_rank_zero
from openrs_pl.hub import resolve_model
from openrs_pl.rollout.types import PromptBatch

OverlongPrompts = Literal["drop", "truncate"]


def fit_prompt_length(
    prompt_ids: list[list[int]], max_length: int, overlong: OverlongPrompts
) -> tuple[list[list[int] | None], int]:
    """Apply the prompt-length limit: overlong prompts become ``None`` (drop) or keep their last tokens (truncate).

    Left truncation keeps the end of the prompt, i.e. the question's tail and the generation prompt, as the
    recipe's trainer did (``prompt_ids[:, -max_prompt_length:]``).

    Returns:
        The fitted ids (same order; ``None`` marks a dropped prompt) and the number of overlong prompts.

    >>> fit_prompt_length([[1, 2, 3], [4]], 2, "truncate")
    ([[2, 3], [4]], 1)
    >>> fit_prompt_length([[1, 2, 3], [4]], 2, "drop")
    ([None, [4]], 1)
    """
    fitted: list[list[int] | None] = []
    for ids in prompt_ids:
        if len(ids) <= max_length:
            fitted.append(ids)
        else:
            fitted.append(ids[-max_length:] if overlong == "truncate" else None)
    return fitted, sum(len(ids) > max_length for ids in prompt_ids)


def with_lookahead(batches: Iterable[PromptBatch]) -> Iterator[PromptBatch]:
    """The same batches, each with the next one's prompt ids (overlapped rollouts generate them a step early).

    >>> [b.next_prompt_ids for b in with_lookahead([PromptBatch([[1]]), PromptBatch([[2]])])]
    [[[2]], []]
    """
    iterator = iter(batches)
    current = next(iterator, None)
    while current is not None:
        following = next(iterator, None)
        yield replace(current, next_prompt_ids=[] if following is None else following.prompt_ids)
        current = following


class LookaheadLoader(DataLoader):
    """A ``DataLoader`` whose batches carry the next batch's prompts (:func:`with_lookahead`).

    Reading one batch ahead changes neither the batches nor their order, so the sampler's resume position (batches
    trained on) still applies; Lightning's own fetcher already reads one batch ahead.
    """

    def __iter__(self) -> Iterator[PromptBatch]:  # type: ignore[override]
        return with_lookahead(super().__iter__())


class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` whose next iteration can start part-way, after the prompts already trained on.

    GRPO recipes run for less than one epoch (Open-RS: 6,000 of 7,000 prompts), so restarting the epoch on resume
    would train on the same prompts twice. ``skip`` is consumed by the next ``__iter__`` only.
    """

    skip: int = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


class ProblemDataModule(LightningDataModule):
    """Serves math problems as chat prompts for GRPO rollouts, ``prompts_per_step`` prompts per rank and step.

    Args:
        source: ``"bundled:open_rs"``, a local file/folder, or a Hugging Face dataset id (see ``load_problems``).
        split: Split of a hub dataset.
        columns: Source column names (default ``problem``/``answer``/``solution``/``level``).
        system_prompt: System turn put before each problem; ``None`` for none. Defaults to Open-RS's.
        max_prompt_length: Longest prompt in tokens (512 in the recipe).
        overlong_prompts: ``"drop"`` overlong prompts or ``"truncate"`` them from the left; either way counted
            and logged.
        on_bad_row: ``"error"`` or ``"skip"`` rows with a missing/empty/non-string problem or answer.
        dedupe: Drop repeated problems (default ``False``: the recipe trained on the data as it is).
        prompts_per_step: Prompts per batch on each rank.
        tokenizer: Path or hub id for ``AutoTokenizer``; the CLI links it from the model, so it may be set after
            construction, before ``setup``.
        seed: Seed of the shuffling (the same seed gives the same order; each epoch reshuffles).
        num_workers: DataLoader workers.
        lookahead: each batch also holds the next batch's prompt ids (``PromptBatch.next_prompt_ids``), for
            overlapped rollouts (the CLI links it from ``rollout.overlap``).
    """

    def __init__(
        self,
        source: str = "knoveleng/open-rs",
        split: str = "train",
        columns: ColumnMap | None = None,
        system_prompt: str | None = OPENRS_SYSTEM_PROMPT,
        max_prompt_length: int = 512,
        overlong_prompts: OverlongPrompts = "drop",
        on_bad_row: OnBadRow = "error",
        dedupe: bool = False,
        prompts_per_step: int = 4,
        tokenizer: str | None = None,
        seed: int = 42,
        num_workers: int = 0,
        lookahead: bool = False,
    ) -> None:
        super().__init__()
        if max_prompt_length < 1 or prompts_per_step < 1:
            raise ValueError(
                f"max_prompt_length and prompts_per_step must be >= 1, got {max_prompt_length}, {prompts_per_step}"
            )
        if overlong_prompts not in ("drop", "truncate"):
            raise ValueError(f"overlong_prompts must be 'drop' or 'truncate', got {overlong_prompts!r}")
        self.source = source
        self.split = split
        self.columns = columns or ColumnMap()
        self.system_prompt = system_prompt
        self.max_prompt_length = max_prompt_length
        self.overlong_prompts = overlong_prompts
        self.on_bad_row = on_bad_row
        self.dedupe = dedupe
        self.prompts_per_step = prompts_per_step
        self.tokenizer = tokenizer
        self.seed = seed
        self.num_workers = num_workers
        self.lookahead = lookahead
        self.rows: list[dict[str, Any]] = []
        self.stats: dict[str, int] = {}
        self._resume: dict[str, int] = {}

    @property
    def num_prompts(self) -> int:
        """Prompts left after checks, dedupe and the length limit (0 before ``setup``)."""
        return len(self.rows)

    def setup(self, stage: str | None = None) -> None:
        """Load and check the problems, build and tokenize the prompts, apply the length limit (once)."""
        if self.rows:
            return
        if self.tokenizer is None:
            raise ValueError("ProblemDataModule needs a tokenizer (a path or id for AutoTokenizer) before setup()")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.tokenizer).location)
        problems, load_stats = load_problems_with_stats(
            self.source, self.split, self.columns, self.on_bad_row, self.dedupe
        )
        prompts = [build_chat_prompt(tokenizer, row["problem"], self.system_prompt) for row in problems]
        # The chat template already starts with BOS: adding special tokens here would put a second one in front.
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        fitted, overlong = fit_prompt_length(prompt_ids, self.max_prompt_length, self.overlong_prompts)
        self.rows = [
            # A truncated prompt's text is re-decoded so that "prompt" and "prompt_ids" always agree.
            {**row, "prompt": text if len(ids) == len(full) else tokenizer.decode(ids), "prompt_ids": ids}
            for row, text, full, ids in zip(problems, prompts, prompt_ids, fitted, strict=True)
            if ids is not None
        ]
        dropping = self.overlong_prompts == "drop"
        self.stats = {
            "loaded": load_stats.loaded,
            "skipped_bad_rows": load_stats.skipped_bad_rows,
            "duplicates": load_stats.duplicates,
            "dropped_overlong": overlong if dropping else 0,
            "truncated_overlong": 0 if dropping else overlong,
        }
        if overlong:
            action = "dropped" if dropping else "left-truncated"
            log_rank_zero(
                f"{self.source}: {action} {overlong} of {len(problems)} prompts longer than "
                f"{self.max_prompt_length} tokens (--data.overlong_prompts {self.overlong_prompts})",
                logging.WARNING,
            )
        if not self.rows:
            raise ValueError(
                f"{self.source}: all {len(problems)} prompts are longer than {self.max_prompt_length} tokens; raise "
                "--data.max_prompt_length or keep their ends with --data.overlong_prompts truncate"
            )
        log_rank_zero(f"{self.source}: {self.num_prompts} prompts ready; {self.stats}")

    def state_dict(self) -> dict[str, int]:
        """Saved in every checkpoint: how many batches of the current epoch were trained on."""
        if self.trainer is None:
            return {}
        # `processed` counts the batch whose optimizer step just ran (checkpoints are written at batch end).
        return {"batches_done": self.trainer.fit_loop.epoch_loop.batch_progress.current.processed}  # type: ignore[attr-defined]

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """On resume, the next ``train_dataloader`` continues after the batches already trained on."""
        self._resume = dict(state_dict)

    def train_dataloader(self) -> DataLoader:
        """Batches for this process's rank, from the attached trainer (rank 0 of 1 without one)."""
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return self.dataloader_for_rank(rank, world_size)

    def dataloader_for_rank(self, rank: int, world_size: int) -> DataLoader:
        """Batches of rank ``rank`` out of ``world_size``: a seeded shard disjoint from every other rank's.

        The sampler is a ``DistributedSampler`` even for one process, so Lightning does not replace it, and
        ``set_epoch`` (which Lightning calls every epoch) reshuffles. ``drop_last`` on both the sampler and the
        loader keeps every rank at the same number of full steps.
        """
        if not self.rows:
            raise RuntimeError("call setup() before asking for a dataloader")
        sampler = ResumableSampler(
            self.rows,  # type: ignore[arg-type]  # a list is a map-style dataset
            num_replicas=world_size,
            rank=rank,
            shuffle=True,
            seed=self.seed,
            drop_last=True,
        )
        batches_done, self._resume = self._resume.get("batches_done", 0), {}
        if batches_done < len(sampler) // self.prompts_per_step:  # a checkpoint from an epoch's end starts afresh
            sampler.skip = batches_done * self.prompts_per_step
        loader = LookaheadLoader if self.lookahead else DataLoader
        return loader(
            self.rows,  # type: ignore[arg-type]  # a list is a map-style dataset
            batch_size=self.prompts_per_step,
            sampler=sampler,
            drop_last=True,
            collate_fn=PromptBatch.from_rows,
            num_workers=self.num_workers,
        )
