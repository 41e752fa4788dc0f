"""Scores from graded completion records, and the Markdown report in the layout of the paper's Table 1."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from openrs_pl.eval.records import EvalRecord, TruncatedPolicy
from openrs_pl.grading import WORKER_DIED
from openrs_pl.metrics.passk import PassAtK

# Column titles of Table 1, in its order.
BENCHMARK_TITLES: dict[str, str] = {
    "aime24": "AIME24",
    "math500": "MATH-500",
    "amc23": "AMC23",
    "minerva": "Minerva",
    "olympiadbench": "OlympiadBench",
}

# Table 1 of Dang & Ngo 2025 (zero-shot pass@1, %): (group, model, AIME24, MATH-500, AMC23, Minerva,
# OlympiadBench, Avg.); None is the paper's dash (no official score).
PAPER_TABLE1: tuple[tuple[str, str, tuple[float | None, ...]], ...] = (
    ("General Models", "Llama-3.1-70B-Instruct", (16.7, 64.6, 30.1, 35.3, 31.9, 35.7)),
    ("General Models", "o1-preview", (44.6, 85.5, None, None, None, None)),
    ("7B Models", "Qwen-2.5-Math-7B-Instruct", (13.3, 79.8, 50.6, 34.6, 40.7, 43.8)),
    ("7B Models", "rStar-Math-7B", (26.7, 78.4, 47.5, None, 47.1, None)),
    ("7B Models", "Eurus-2-7B-PRIME", (26.7, 79.2, 57.8, 38.6, 42.1, 48.9)),
    ("7B Models", "Qwen2.5-7B-SimpleRL", (26.7, 82.4, 62.5, 39.7, 43.3, 50.9)),
    ("1.5B Models", "DeepSeek-R1-Distill-Qwen-1.5B", (28.8, 82.8, 62.9, 26.5, 43.3, 48.9)),
    ("1.5B Models", "Still-3-1.5B-Preview", (32.5, 84.4, 66.7, 29.0, 45.4, 51.6)),
    ("1.5B Models", "DeepScaleR-1.5B-Preview", (43.1, 87.8, 73.6, 30.2, 50.0, 57.0)),
    ("Our Models", "Open-RS1 (100 steps)", (30.0, 83.8, 70.0, 29.0, 52.4, 53.0)),
    ("Our Models", "Open-RS2 (50 steps)", (30.0, 85.4, 80.0, 30.5, 52.4, 55.7)),
    ("Our Models", "Open-RS3 (50 steps)", (46.7, 84.4, 72.5, 26.8, 51.3, 56.3)),
)


def report_ks(samples: int) -> list[int]:
    """The k of pass@k to report for ``samples`` per problem: powers of two up to it, and ``samples`` itself.

    >>> report_ks(1), report_ks(6), report_ks(16)
    ([1], [1, 2, 4, 6], [1, 2, 4, 8, 16])
    """
    return sorted({2**i for i in range(samples.bit_length()) if 2**i <= samples} | {samples})


def summarize_benchmark(
    records: Sequence[EvalRecord], ks: Sequence[int], truncated: TruncatedPolicy = "grade"
) -> dict[str, Any]:
    """Scores of one benchmark's graded records: pass@k, length, truncation and grader diagnostics.

    Problems may have different sample counts (an interrupted run); pass@k is reported for the ks every
    problem has enough samples for. ``truncated_correct_frac`` is the share of completions cut at the token limit
    that the grader still found the gold in (credited under ``truncated="grade"``, not under ``"wrong"``).
    """
    by_problem: dict[str, list[bool]] = {}
    for r in records:
        by_problem.setdefault(r.id, []).append(r.scored(truncated))
    counts_n = torch.tensor([len(v) for v in by_problem.values()])  # [P]
    counts_c = torch.tensor([sum(v) for v in by_problem.values()])  # [P]
    usable = [k for k in ks if counts_n.numel() and k <= int(counts_n.min())]
    scores: dict[str, float] = {}
    if usable:
        metric = PassAtK(ks=usable)
        metric.update(counts_c, counts_n)
        scores = {name: float(value) for name, value in metric.compute().items()}
    lengths = [r.num_tokens for r in records]
    n = len(records)
    return {
        "problems": len(by_problem),
        "completions": len(records),
        **scores,
        "mean_tokens": sum(lengths) / len(lengths) if lengths else math.nan,
        "max_tokens_seen": max(lengths, default=0),
        "truncated_frac": sum(r.truncated for r in records) / n if n else math.nan,
        "truncated_correct_frac": sum(r.truncated and r.correct for r in records) / n if n else math.nan,
        "no_answer_frac": sum(not r.pred for r in records) / n if n else math.nan,
        "gold_parse_failures": sum(not r.gold_ok for r in records),
        "grading_timeouts": sum(r.timed_out for r in records),
        "grading_errors": sum(r.error is not None for r in records),
        "grader_crashes": sum(r.error is not None and r.error.startswith(WORKER_DIED) for r in records),
    }


def summarize(
    records: Iterable[EvalRecord], benchmarks: Sequence[str], samples: int, truncated: TruncatedPolicy = "grade"
) -> dict[str, Any]:
    """Per-benchmark scores and their unweighted average (the paper's "Avg." column) over ``benchmarks``."""
    grouped: dict[str, list[EvalRecord]] = {b: [] for b in benchmarks}
    for r in records:
        if r.benchmark in grouped:
            grouped[r.benchmark].append(r)
    ks = report_ks(samples)
    per_bench = {b: summarize_benchmark(rs, ks, truncated) for b, rs in grouped.items()}
    average: dict[str, float] = {}
    for key in [f"pass@{k}" for k in ks] + ["mean_tokens", "truncated_frac"]:
        values = [s[key] for s in per_bench.values() if key in s]
        if len(values) == len(per_bench):
            average[key] = sum(values) / len(values)
    return {"benchmarks": per_bench, "average": average}


def _cell(value: float | None, scale: float = 100.0, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value * scale:.{digits}f}"


def render_markdown(results: dict[str, Any], model_label: str) -> str:
    """Table 1 with this run's pass@1 row under the paper's rows, then this run's full figures."""
    scores = results["scores"]
    header = ["Model", *BENCHMARK_TITLES.values(), "Avg."]
    lines = [
        "# Zero-shot pass@1 (%)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    group = None
    for row_group, model, values in PAPER_TABLE1:
        if row_group != group:
            group = row_group
            lines.append(f"| *{group}* |" + " |" * (len(header) - 1))
        lines.append(f"| {model} | " + " | ".join(_cell(v, scale=1.0) for v in values) + " |")
    ours = [scores["benchmarks"].get(b, {}).get("pass@1") for b in BENCHMARK_TITLES]
    all_five = all(v is not None for v in ours)
    avg = scores["average"].get("pass@1") if all_five else None
    lines.append("| *This run* |" + " |" * (len(header) - 1))
    lines.append(f"| **{model_label}** | " + " | ".join(_cell(v) for v in [*ours, avg]) + " |")
    lines += ["", _sampling_note(results), "", *_details_table(scores)]
    return "\n".join(lines) + "\n"


def _sampling_note(results: dict[str, Any]) -> str:
    cfg = results["config"]
    return (
        f"This run: {cfg['samples']} sample(s) per problem (pass@1 = mean over samples), temperature "
        f"{cfg['temperature']}, top-p {cfg['top_p']}, max {cfg['max_new_tokens']} new tokens, engine "
        f"{results['engine']}, truncated completions: {cfg['truncated']}. Paper rows: Table 1 of Dang & Ngo 2025 "
        "(one sample per problem for Open-RS)."
    )


def _details_table(scores: dict[str, Any]) -> list[str]:
    """Every pass@k, the length figures and the grader diagnostics per benchmark."""
    per_bench = scores["benchmarks"]
    ks = sorted({key for s in per_bench.values() for key in s if key.startswith("pass@")}, key=lambda s: int(s[5:]))
    header = ["Benchmark", "Problems", *ks, "Mean tokens", "Truncated %", "No answer %", "Gold unparsed", "Timeouts"]
    lines = ["## Details", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, s in per_bench.items():
        cells = [
            BENCHMARK_TITLES.get(name, name),
            str(s["problems"]),
            *(_cell(s.get(k)) for k in ks),
            _cell(s["mean_tokens"], scale=1.0, digits=0),
            _cell(s["truncated_frac"]),
            _cell(s["no_answer_frac"]),
            str(s["gold_parse_failures"]),
            str(s["grading_timeouts"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    avg = scores["average"]
    cells = ["Average", "", *(_cell(avg.get(k)) for k in ks), _cell(avg.get("mean_tokens"), 1.0, 0)]
    cells += [_cell(avg.get("truncated_frac")), "", "", ""]
    lines.append("| " + " | ".join(cells) + " |")
    return lines
