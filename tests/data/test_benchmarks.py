"""Benchmark registry: counts, gold columns, the quirks the README documents, and bundled-file integrity."""

from __future__ import annotations

import gzip
import hashlib
import re

import pytest

from openrs_pl.data import benchmarks
from openrs_pl.data.benchmarks import BENCHMARKS, BenchmarkSpec, load_benchmark
from openrs_pl.data.bundled import BUNDLED_DIR, read_bundled

# The sizes the issue and the paper give for the five benchmarks.
EXPECTED_COUNTS = {"aime24": 30, "math500": 500, "amc23": 40, "minerva": 272, "olympiadbench": 675}


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text``, matching nested braces."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    while depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[start + len("\\boxed{") : i - 1]


def test_registry_names_counts_and_gold_modes() -> None:
    assert {name: spec.count for name, spec in BENCHMARKS.items()} == EXPECTED_COUNTS
    # Recipe §4: expr_gold_metric for AIME24/AMC23, latex_gold_metric for the others.
    assert {name for name, spec in BENCHMARKS.items() if spec.gold_mode == "expr"} == {"aime24", "amc23"}


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_load_benchmark_rows(name: str) -> None:
    rows = load_benchmark(name)
    raw = list(read_bundled(BENCHMARKS[name].bundled))
    assert len(rows) == len(raw) == EXPECTED_COUNTS[name]
    assert [r["id"] for r in rows] == [r["id"] for r in raw]
    assert all(isinstance(r["problem"], str) and r["problem"].strip() for r in rows)
    assert all(isinstance(r["answer"], str) and r["answer"].strip() for r in rows)


def test_minerva_grades_with_the_boxed_solution_answer_not_deepscaler() -> None:
    rows = load_benchmark("minerva")
    assert all(r["answer_source"] == last_boxed(r["solution"]) for r in rows)
    assert sum(r["answer_source"] != r["answer_deepscaler"] for r in rows) == 131


def test_math500_answer_is_the_boxed_solution() -> None:
    assert all(r["answer"] == last_boxed(r["solution"]) for r in load_benchmark("math500"))


def test_olympiadbench_answers_are_kept_verbatim_with_dollars() -> None:
    rows = load_benchmark("olympiadbench")
    assert all(r["answer_source"] == r["final_answer"][0] for r in rows)
    assert sum("$" in r["answer_source"] for r in rows) == 266


def test_integer_contests_have_integer_golds() -> None:
    for name in ("aime24", "amc23"):
        assert all(re.fullmatch(r"-?\d+", r["answer"]) for r in load_benchmark(name))


def test_unknown_benchmark_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown benchmark 'aime25'; known: aime24, math500, amc23, minerva"):
        load_benchmark("aime25")


def test_count_mismatch_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(benchmarks.BENCHMARKS, "amc23", BenchmarkSpec("amc23", "amc23", 41, "expr"))
    with pytest.raises(ValueError, match="benchmark 'amc23' has 40 rows, expected 41"):
        load_benchmark("amc23")


def test_bundled_files_match_readme_sha256_and_stay_small() -> None:
    readme = (BUNDLED_DIR / "README.md").read_text(encoding="utf-8")
    listed = dict(
        (name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})  (\w+)\.jsonl$", readme, flags=re.MULTILINE)
    )
    files = sorted(BUNDLED_DIR.glob("*.jsonl.gz"))
    assert {p.name.removesuffix(".jsonl.gz") for p in files} == set(listed) == {*EXPECTED_COUNTS, "open_rs"}
    for path in files:
        assert path.stat().st_size < 5 * 2**20
        content = gzip.decompress(path.read_bytes())
        assert hashlib.sha256(content).hexdigest() == listed[path.name.removesuffix(".jsonl.gz")], path.name
