"""Agreement of our grader with another evaluator's verdicts on real model completions.

The rows (JSONL files of model completions, one per benchmark) carry a completion, its gold answer and the
verdict of the harness that produced it (Qwen2.5-Math's ``math_equal``). We grade each row as ``openrs-pl eval``
does (lighteval's parse, the benchmark's gold mode) and count where the two verdicts agree; the disagreements are
what ``docs/grading.md`` classifies.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from openrs_pl.rewards.grading import GoldMode, Verdict, grade_batch

# Benchmark names in the completion files -> the gold mode our evaluation uses for them (as lighteval).
GOLD_MODES: dict[str, GoldMode] = {
    "aime24": "expr",
    "amc23": "expr",
    "math500": "latex",
    "math (MATH test, first 100 problems)": "latex",  # Qwen2.5-Math maj@8 example file, graded like MATH-500
    "minerva_math": "latex",
    "olympiadbench": "latex",
}

# Markers of a finished Sky-T1 solution; their absence in a long completion means it was cut at the token limit.
_END_MARKERS = ("<|end_of_solution|>",)
_LONG_CHARS = 60_000


def read_rows(data_dir: Path) -> Iterator[dict[str, Any]]:
    """Every row of every ``*.jsonl`` in ``data_dir``, with its file name added as ``file``."""
    for path in sorted(data_dir.glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                yield {**json.loads(line), "file": path.name}


def looks_truncated(completion: str) -> bool:
    """A long-CoT completion cut at the token limit: very long and without the end-of-solution marker."""
    return len(completion) > _LONG_CHARS and not any(m in completion for m in _END_MARKERS)


def grade_rows(rows: Sequence[dict[str, Any]], timeout_s: float = 5.0, batch: int = 256) -> list[Verdict]:
    """Our verdict for each row (lighteval parse, per-benchmark gold mode), in row order."""
    out: list[Verdict] = []
    for start in range(0, len(rows), batch):
        part = rows[start : start + batch]
        by_mode: dict[GoldMode, list[int]] = {}
        for i, row in enumerate(part):
            by_mode.setdefault(GOLD_MODES[row["benchmark"]], []).append(i)
        graded: dict[int, Verdict] = {}
        for mode, idx in by_mode.items():
            verdicts = grade_batch(
                [part[i]["completion"] for i in idx], [str(part[i]["gold"]) for i in idx], mode, "lighteval",
                timeout_s=timeout_s,
            )  # fmt: skip
            graded.update(zip(idx, verdicts, strict=True))
        out.extend(graded[i] for i in range(len(part)))
    return out


def disagreement(row: dict[str, Any], ours: Verdict) -> dict[str, Any]:
    """The fields needed to judge a disagreement by eye (the completion's tail only)."""
    return {
        "file": row["file"],
        "idx": row.get("idx"),
        "sample_index": row.get("sample_index"),
        "benchmark": row["benchmark"],
        "gold": row["gold"],
        "source_pred": row.get("source_pred"),
        "our_pred": ours.pred,
        "source_verdict": bool(row["verdict"]),
        "our_verdict": ours.correct,
        "timed_out": ours.timed_out,
        "error": ours.error,
        "truncated": looks_truncated(row["completion"]),
        "completion_chars": len(row["completion"]),
        "completion_tail": row["completion"][-400:],
    }


def agreement_report(rows: Sequence[dict[str, Any]], timeout_s: float = 5.0) -> dict[str, Any]:
    """Per-benchmark agreement of our grader with the rows' source verdicts, plus every disagreement."""
    start = time.perf_counter()
    graded = grade_rows(rows, timeout_s=timeout_s)
    seconds = time.perf_counter() - start
    per_bench: dict[str, dict[str, Any]] = {}
    disagreements = []
    for row, verdict in zip(rows, graded, strict=True):
        stats = per_bench.setdefault(
            row["benchmark"], {"rows": 0, "agree": 0, "ours_only": 0, "source_only": 0, "timeouts": 0}
        )
        ours, theirs = verdict.correct, bool(row["verdict"])
        stats["rows"] += 1
        stats["agree"] += ours == theirs
        stats["ours_only"] += ours and not theirs
        stats["source_only"] += theirs and not ours
        stats["timeouts"] += verdict.timed_out
        if ours != theirs:
            disagreements.append(disagreement(row, verdict))
    for stats in per_bench.values():
        stats["agreement"] = stats["agree"] / stats["rows"]
    total = sum(s["rows"] for s in per_bench.values())
    overall = sum(s["agree"] for s in per_bench.values()) / total if total else float("nan")
    return {
        "rows": total,
        "overall_agreement": overall,
        "benchmarks": dict(sorted(per_bench.items())),
        "seconds": seconds,
        "disagreements": disagreements,
    }


def render_table(report: dict[str, Any]) -> str:
    """Markdown table of the agreement figures."""
    lines = [
        "| benchmark | rows | agree % | ours correct, source wrong | source correct, ours wrong | timeouts |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in report["benchmarks"].items():
        lines.append(
            f"| {name} | {s['rows']} | {100 * s['agreement']:.2f} | {s['ours_only']} | {s['source_only']} "
            f"| {s['timeouts']} |"
        )
    lines.append(f"| **all** | {report['rows']} | {100 * report['overall_agreement']:.2f} | | | |")
    return "\n".join(lines)
