"""Agreement of our grader with another evaluator's verdicts on real model completions.

Usage: ``python scripts/grader_agreement.py --data-dir DIR [--out grader_agreement.json] [--every N]``.

``DIR`` holds JSONL files of completions, one per line with ``benchmark``, ``idx`` (the problem's position in the
benchmark), ``problem``, ``gold``, ``completion`` and ``verdict`` (the source harness's, here Qwen2.5-Math's
``math_equal``). Each row is graded exactly as ``openrs-pl eval`` grades
(:func:`openrs_pl.eval.pipeline.grade_records`) against the *bundled* benchmark's gold for that problem, not the
file's copy, which the source's normalisation mangled in places (``\\begin{pmatrix}-2\\\\-14\\end{pmatrix}`` stored
as ``\\begin{pmatrix}-2-14\\end{pmatrix}``). Rows of a benchmark we do not bundle (Qwen's MATH-test example) keep
the file's gold and are graded like MATH-500. Prints a per-benchmark table and writes the figures plus every
disagreement (with the completion's tail) as JSON; ``docs/grading.md`` discusses the results.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from openrs_pl.data.benchmarks import load_benchmark
from openrs_pl.eval.pipeline import grade_records
from openrs_pl.eval.records import EvalRecord

# Benchmark names in the completion files -> our benchmark (its bundled golds and gold mode).
BENCHMARK_OF: dict[str, str] = {
    "aime24": "aime24",
    "amc23": "amc23",
    "math500": "math500",
    "minerva_math": "minerva",
    "olympiadbench": "olympiadbench",
}
# Not bundled: graded with the file's gold, in MATH-500's gold mode.
FILE_GOLD_BENCHMARKS: dict[str, str] = {"math (MATH test, first 100 problems)": "math500"}

# Markers of a finished Sky-T1 solution; their absence in a long completion means it was cut at the token limit.
_END_MARKERS = ("<|end_of_solution|>",)
_LONG_CHARS = 60_000


def read_rows(data_dir: Path) -> Iterator[dict[str, Any]]:
    """Every row of every ``*.jsonl`` (or ``*.jsonl.gz``) in ``data_dir``, with its file name added as ``file``."""
    paths = sorted([*data_dir.glob("*.jsonl"), *data_dir.glob("*.jsonl.gz")], key=lambda p: p.name)
    for path in paths:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                yield {**json.loads(line), "file": path.name.removesuffix(".gz")}


def looks_truncated(completion: str) -> bool:
    """A long-CoT completion cut at the token limit: very long and without the end-of-solution marker.

    >>> looks_truncated("x" * 70_000), looks_truncated("x" * 70_000 + "<|end_of_solution|>"), looks_truncated("x")
    (True, False, False)
    """
    return len(completion) > _LONG_CHARS and not any(m in completion for m in _END_MARKERS)


def _same_problem(a: str, b: str) -> bool:
    return re.sub(r"\s+", " ", a).strip() == re.sub(r"\s+", " ", b).strip()


def to_records(rows: Sequence[dict[str, Any]]) -> list[EvalRecord]:
    """One ungraded record per row, with the bundled gold of its problem.

    Raises:
        ValueError: a row's ``idx`` does not point at the same problem in the bundled benchmark.
    """
    bundled = {name: load_benchmark(name) for name in set(BENCHMARK_OF.values())}
    records = []
    for i, row in enumerate(rows):
        if row["benchmark"] in FILE_GOLD_BENCHMARKS:
            benchmark, gold = FILE_GOLD_BENCHMARKS[row["benchmark"]], str(row["gold"])
        else:
            benchmark = BENCHMARK_OF[row["benchmark"]]
            problem = bundled[benchmark][row["idx"]]
            if not _same_problem(problem["problem"], row["problem"]):
                raise ValueError(f"{row['file']}: idx {row['idx']} is another problem than {benchmark}'s")
            gold = problem["answer"]
        records.append(
            EvalRecord(
                benchmark=benchmark,
                id=str(row.get("idx", i)),
                sample=int(row.get("sample_index") or 0),
                problem=row["problem"],
                gold=gold,
                completion=row["completion"],
                num_tokens=0,  # the files have no token counts
                truncated=looks_truncated(row["completion"]),
            )
        )
    return records


def disagreement(row: dict[str, Any], ours: EvalRecord) -> dict[str, Any]:
    """The fields needed to judge a disagreement by eye (the completion's tail only)."""
    return {
        "file": row["file"],
        "idx": row.get("idx"),
        "sample_index": row.get("sample_index"),
        "benchmark": row["benchmark"],
        "gold": ours.gold,
        "file_gold": row["gold"],
        "source_pred": row.get("source_pred"),
        "our_pred": ours.pred,
        "source_verdict": bool(row["verdict"]),
        "our_verdict": ours.correct,
        "timed_out": ours.timed_out,
        "error": ours.error,
        "truncated": ours.truncated,
        "completion_chars": len(row["completion"]),
        "completion_tail": row["completion"][-400:],
    }


def agreement_report(rows: Sequence[dict[str, Any]], timeout_s: float = 5.0) -> dict[str, Any]:
    """Per-benchmark agreement of our grader with the rows' source verdicts, plus every disagreement."""
    start = time.perf_counter()
    graded = grade_records(to_records(rows), timeout_s=timeout_s)
    seconds = time.perf_counter() - start
    per_bench: dict[str, dict[str, Any]] = {}
    disagreements = []
    for row, ours in zip(rows, graded, strict=True):
        stats = per_bench.setdefault(
            row["benchmark"], {"rows": 0, "agree": 0, "ours_only": 0, "source_only": 0, "timeouts": 0}
        )
        theirs = bool(row["verdict"])
        stats["rows"] += 1
        stats["agree"] += ours.correct == theirs
        stats["ours_only"] += ours.correct and not theirs
        stats["source_only"] += theirs and not ours.correct
        stats["timeouts"] += ours.timed_out
        if ours.correct != theirs:
            disagreements.append(disagreement(row, ours))
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="folder of completion JSONL files")
    parser.add_argument("--out", type=Path, default=Path("grader_agreement.json"), help="JSON report path")
    parser.add_argument("--every", type=int, default=1, help="grade only every N-th row (quick look)")
    parser.add_argument("--timeout-s", type=float, default=5.0, help="grading time limit per completion")
    args = parser.parse_args(argv)
    if not args.data_dir.is_dir():
        parser.error(f"no completions folder at {args.data_dir}")
    rows = list(read_rows(args.data_dir))[:: args.every]
    report = agreement_report(rows, timeout_s=args.timeout_s)
    args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(render_table(report))
    print(
        f"{report['rows']} rows graded in {report['seconds']:.0f} s; {len(report['disagreements'])} disagreements "
        f"written to {args.out}"
    )


if __name__ == "__main__":
    main()
