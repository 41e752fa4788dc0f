"""The completions table from plain per-completion fields, written as JSONL and CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from openrs_pl.completions import append_csv, append_jsonl, completion_rows, read_jsonl


def rows(step: int) -> list[dict]:
    return completion_rows(
        step,
        prompts=["1+1?", "1+1?"],
        completions=["<think>2</think> \\boxed{2}", "3, with a comma"],
        rewards={"format": [1.0, 0.0], "accuracy": [1.0, 0.0]},
        total_rewards=[3.0, 0.0],
        advantages=[0.7071, -0.7071],
        lengths=[9, 12],
        truncated=[False, True],
    )


def test_rows_carry_every_field() -> None:
    first = rows(5)[1]
    assert first == {
        "step": 5, "prompt": "1+1?", "completion": "3, with a comma", "reward": 0.0, "advantage": -0.7071,
        "length": 12, "truncated": True, "reward/format": 0.0, "reward/accuracy": 0.0,
    }  # fmt: skip


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="accuracy has 1 entries for 2 completions"):
        completion_rows(1, ["a", "b"], ["x", "y"], {"accuracy": [1.0]}, [1, 1], [0, 0], [1, 1], [False, False])


def test_jsonl_and_csv_append_across_steps(tmp_path: Path) -> None:
    for step in (1, 11):
        append_jsonl(rows(step), tmp_path / "c.jsonl")
        append_csv(rows(step), tmp_path / "c.csv")
    assert read_jsonl(tmp_path / "c.jsonl") == rows(1) + rows(11)
    with (tmp_path / "c.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["step"] for r in table] == ["1", "1", "11", "11"]  # one header, then every row
    assert table[1]["completion"] == "3, with a comma" and table[1]["truncated"] == "True"


def test_bad_settings_are_rejected() -> None:
    from openrs_pl.completions import CompletionsTable

    with pytest.raises(ValueError, match="every_n_steps must be >= 0"):
        CompletionsTable(every_n_steps=-1)
