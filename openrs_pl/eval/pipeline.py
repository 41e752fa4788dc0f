"""Generate-then-grade for benchmark problems, shared by ``openrs-pl eval`` and the in-training validation callback.

A *record* is one completion as written to ``completions.jsonl``: which problem and sample it is, the text, its
length and whether it hit the token limit, and the grader's verdict (extracted answer, gold, correct or not).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from openrs_pl.data.benchmarks import BENCHMARKS
from openrs_pl.data.prompts import build_chat_prompt, format_eval_problem
from openrs_pl.rewards.grading import GoldMode, grade_batch
from openrs_pl.rollout.types import GenerationOutput, SamplingConfig

Generate = Callable[[list[list[int]], SamplingConfig], GenerationOutput]
"""An engine's ``generate`` (or anything with its signature, e.g. a rank-0 dispatcher)."""


@dataclass(frozen=True)
class WorkItem:
    """One problem of a benchmark and the sample indices still to generate for it."""

    benchmark: str
    row: dict[str, Any]
    samples: tuple[int, ...]


def encode_eval_prompts(tokenizer: Any, problems: Sequence[str]) -> list[list[int]]:
    """Token ids of the evaluation prompts: lighteval's math instruction in the chat template, no system turn."""
    texts = [build_chat_prompt(tokenizer, format_eval_problem(p), None) for p in problems]
    # The chat template already holds the BOS token; adding special tokens again would double it.
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def generate_records(
    generate: Generate, tokenizer: Any, items: Sequence[WorkItem], sampling: SamplingConfig
) -> list[dict[str, Any]]:
    """Sample ``len(item.samples)`` completions for each item, in one request; all items must want as many.

    Returns:
        One ungraded record per completion, in item order then sample order.
    """
    if not items:
        return []
    n = len(items[0].samples)
    if any(len(item.samples) != n for item in items):
        raise ValueError("all items of one request must ask for the same number of samples")
    prompt_ids = encode_eval_prompts(tokenizer, [item.row["problem"] for item in items])
    out = generate(prompt_ids, SamplingConfig(**{**sampling.__dict__, "n": n}))
    texts = tokenizer.batch_decode(out.completion_ids, skip_special_tokens=True)
    records = []
    for i, item in enumerate(items):
        for j, sample in enumerate(item.samples):
            k = i * n + j
            records.append(
                {
                    "benchmark": item.benchmark,
                    "id": item.row["id"],
                    "sample": sample,
                    "problem": item.row["problem"],
                    "gold": item.row["answer"],
                    "completion": texts[k],
                    "num_tokens": len(out.completion_ids[k]),
                    "truncated": not out.finished[k],
                }
            )
    return records


def grade_records(records: list[dict[str, Any]], timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """Add the grader's verdict to each record (lighteval's parse, each benchmark's gold mode); returns them."""
    by_mode: dict[GoldMode, list[dict[str, Any]]] = {}
    for record in records:
        by_mode.setdefault(BENCHMARKS[record["benchmark"]].gold_mode, []).append(record)
    for gold_mode, group in by_mode.items():
        verdicts = grade_batch(
            [r["completion"] for r in group],
            [str(r["gold"]) for r in group],
            gold_mode,
            "lighteval",
            timeout_s=timeout_s,
        )
        for record, verdict in zip(group, verdicts, strict=True):
            record.update(
                pred=verdict.pred,
                correct=verdict.correct,
                gold_ok=verdict.gold_ok,
                timed_out=verdict.timed_out,
                error=verdict.error,
            )
    return records
