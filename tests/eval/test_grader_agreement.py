"""Our grader vs the Qwen2.5-Math evaluator's verdicts on real completions (a folder of JSONL files).

Grades a fixed every-8th-row subsample (~1,000 rows, ~1-2 min on 2 cores) and asserts per-benchmark agreement
floors one point below what that subsample measured; ``scripts/grader_agreement.py`` runs all ~8,000 rows and
``docs/grading.md`` explains the remaining disagreements.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest

from openrs_pl.eval.agreement import GOLD_MODES, agreement_report, looks_truncated, read_rows
from openrs_pl.rewards.grading import grade, grade_batch

DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "completions"
EVERY = 8

# Agreement (%) measured on the every-8th-row subsample, minus one point. Minerva is lower than before the
# e-notation gold fix (91.6 -> 89.08 measured) because the source evaluator cannot match "3\times10^{8}" to the
# gold "3e8" either; those rows are now correct on our side only (test_e_notation_golds_match_times_ten below).
FLOORS = {
    "aime24": 99.0,
    "amc23": 99.0,
    "math (MATH test, first 100 problems)": 99.0,
    "math500": 96.1,
    "minerva_math": 88.0,
    "olympiadbench": 95.0,
}
_TIMES_TEN = re.compile(r"(-?\d+(?:\.\d+)?)\\times10\^\{?(-?\d+)\}?")

needs_data = pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"real completions not present at {DATA_DIR}")


@needs_data
@pytest.mark.slow
def test_agreement_floors_per_benchmark() -> None:
    rows = list(read_rows(DATA_DIR))[::EVERY]
    report = agreement_report(rows)
    assert set(report["benchmarks"]) == set(FLOORS)
    for bench, stats in report["benchmarks"].items():
        assert 100 * stats["agreement"] >= FLOORS[bench], (bench, stats)
    assert len(report["disagreements"]) == sum(s["rows"] - s["agree"] for s in report["benchmarks"].values())


@needs_data
def test_long_truncated_completion_grades_fast() -> None:
    row = max(read_rows(DATA_DIR), key=lambda r: len(r["completion"]))
    assert len(row["completion"]) > 100_000 and looks_truncated(row["completion"])
    grade("\\boxed{1}", "1")  # start the grading workers outside the timed part
    start = time.perf_counter()
    verdict = grade(row["completion"], row["gold"], GOLD_MODES[row["benchmark"]], "lighteval")
    assert time.perf_counter() - start < 3.0
    assert not verdict.timed_out


@needs_data
def test_e_notation_golds_match_times_ten() -> None:
    """Every answer the source extracted as m\\times10^{k} with the value of an e-notation gold is graded correct."""
    rows = [
        r for r in read_rows(DATA_DIR)
        if re.fullmatch(r"-?\d+(\.\d+)?e[+-]?\d+", str(r["gold"])) and _TIMES_TEN.fullmatch(r["source_pred"] or "")
    ]  # fmt: skip
    match = [_TIMES_TEN.fullmatch(r["source_pred"]) for r in rows]
    values = [float(m[1]) * 10 ** int(m[2]) for m in match]  # type: ignore[index]
    equal = [math.isclose(v, float(r["gold"]), rel_tol=1e-9) for v, r in zip(values, rows, strict=True)]
    assert sum(equal) >= 40 and not all(equal)  # real cases of both kinds
    verdicts = grade_batch([r["completion"] for r in rows], [r["gold"] for r in rows], "latex", "lighteval")
    assert [v.correct for v in verdicts] == equal
