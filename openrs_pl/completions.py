"""The completions table: what the policy actually wrote, with its rewards and advantage, every N steps.

:func:`completion_rows` builds the rows from plain per-completion fields (so any rollout interface can feed it),
:func:`append_jsonl` / :func:`append_csv` write them next to the metrics (``completions.jsonl``,
``completions.csv``), and :class:`CompletionsTable` takes the fields from each step's ``batch.rollout`` and
also logs a W&B table (``completions``) when a :class:`~lightning.pytorch.loggers.WandbLogger` is attached.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L

from openrs_pl.console import run_log_dir
from openrs_pl.rollout.callback import find_rollout_callback
from openrs_pl.rollout.types import PromptBatch, RolloutBatch

COLUMNS = ("step", "prompt", "completion", "reward", "advantage", "length", "truncated")


def completion_rows(
    step: int,
    prompts: Sequence[str],
    completions: Sequence[str],
    rewards: dict[str, Sequence[float]],
    total_rewards: Sequence[float],
    advantages: Sequence[float],
    lengths: Sequence[int],
    truncated: Sequence[bool],
) -> list[dict[str, Any]]:
    """One row per completion: the ``COLUMNS`` plus ``reward/<name>`` for each reward function.

    >>> completion_rows(3, ["1+1?"], ["2"], {"accuracy": [1.0]}, [2.0], [0.5], [4], [False])
    [{'step': 3, 'prompt': '1+1?', 'completion': '2', 'reward': 2.0, 'advantage': 0.5, 'length': 4, \
'truncated': False, 'reward/accuracy': 1.0}]
    """
    n = len(completions)
    for name, values in [("prompts", prompts), ("advantages", advantages), ("lengths", lengths)] + list(
        rewards.items()
    ):
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries for {n} completions")
    return [
        {
            "step": step,
            "prompt": prompts[i],
            "completion": completions[i],
            "reward": float(total_rewards[i]),
            "advantage": float(advantages[i]),
            "length": int(lengths[i]),
            "truncated": bool(truncated[i]),
            **{f"reward/{name}": float(values[i]) for name, values in rewards.items()},
        }
        for i in range(n)
    ]


def append_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def append_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Append rows; the header is written with the first rows of a new file."""
    if not rows:
        return
    new = not path.exists()
    with path.open("a", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class CompletionsTable(L.Callback):
    """Every ``every_n_steps`` optimizer steps, record up to ``max_rows`` of the step's completions.

    Rows go to ``completions.jsonl`` and ``completions.csv`` in the first logger's directory, and to a W&B table
    named ``completions`` when a WandbLogger is attached (one table per logged step).

    Args:
        every_n_steps: how often (in optimizer steps) to record; 0 = never.
        max_rows: completions kept per recorded step (whole groups, in batch order).
    """

    def __init__(self, every_n_steps: int = 10, max_rows: int = 24) -> None:
        super().__init__()
        if every_n_steps < 0 or max_rows < 1:
            raise ValueError("completions.every_n_steps must be >= 0 and completions.max_rows >= 1")
        self.every_n_steps = every_n_steps
        self.max_rows = max_rows

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step  # already counts the step that just ran
        due = self.every_n_steps > 0 and (step == 1 or step % self.every_n_steps == 0)
        if not due or not trainer.is_global_zero:
            return
        rollout = batch.rollout if isinstance(batch, PromptBatch) else None
        rollout_callback = find_rollout_callback(trainer)
        if rollout is None or rollout_callback is None:
            return
        reward_set = rollout_callback.reward_set
        fields = rollout_fields(rollout, batch, pl_module.tokenizer, reward_set.names, self.max_rows)
        rows = completion_rows(step, **fields)
        log_dir = run_log_dir(trainer)  # rank 0 only: Trainer.log_dir would be a collective here
        if log_dir is not None:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            append_jsonl(rows, Path(log_dir) / "completions.jsonl")
            append_csv(rows, Path(log_dir) / "completions.csv")
        _log_wandb_table(trainer, rows, step)


def rollout_fields(
    rollout: RolloutBatch, batch: PromptBatch, tokenizer: Any, reward_names: Sequence[str], max_rows: int
) -> dict[str, Any]:
    """The plain per-completion fields of a ``RolloutBatch`` (the hook between the rollout and the table)."""
    n = min(rollout.completion_ids.shape[0], max_rows)
    g = rollout.completion_ids.shape[0] // max(len(batch), 1)
    problems = batch.columns.get("problem") or batch.columns.get("prompt") or [""] * len(batch)
    mask = rollout.completion_mask[:n].bool()
    ids = [row[m].tolist() for row, m in zip(rollout.completion_ids[:n], mask, strict=True)]
    per_func = rollout.reward_per_func[:n].float().cpu()
    return {
        "prompts": [str(problems[i // g]) for i in range(n)],
        "completions": tokenizer.batch_decode(ids, skip_special_tokens=True),
        "rewards": {name: per_func[:, r].tolist() for r, name in enumerate(reward_names)},
        "total_rewards": rollout.rewards[:n].float().cpu().tolist(),
        "advantages": rollout.advantages[:n].float().cpu().tolist(),
        "lengths": mask.sum(dim=1).tolist(),
        "truncated": rollout.truncated[:n].cpu().tolist(),
    }


def _log_wandb_table(trainer: L.Trainer, rows: list[dict[str, Any]], step: int) -> None:
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and rows:
            columns = list(rows[0])
            logger.log_table("completions", columns=columns, data=[[r[c] for c in columns] for r in rows], step=step)
