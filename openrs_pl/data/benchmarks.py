"""The five evaluation benchmarks of the Open-RS paper, bundled, loaded by name and checked against their sizes.

The ``answer`` of each row is the gold that grading uses (see ``openrs_pl/data/bundled/README.md``):

- **minerva**: ``answer`` is the last ``\\boxed{}`` of the official solution, not ``answer_deepscaler``. Open-RS's
  lighteval task grades Minerva against the ``solution`` column with LaTeX extraction, which picks exactly that
  boxed content (it equals ``answer`` on all 272 rows); ``answer_deepscaler`` is DeepScaleR's later re-annotation
  (131 rows differ, e.g. ``6630`` vs ``6630.65``), so grading with it would not measure what the paper measured.
  It stays available as an extra column.
- **olympiadbench**: ``answer`` is kept as the source gives it, ``$…$`` wrappers included (266 rows). Stripping
  them, as Qwen's ``strip("$")`` does, breaks the 20 multi-part answers such as ``$69$,$84$`` (into ``69$,$84``)
  and removes the delimiters math-verify's LaTeX extractor needs (``$2n-2$`` parses, bare ``2n-2`` does not).
- **math500**: ``answer`` equals the last ``\\boxed{}`` of ``solution`` (the recipe's gold column) on all 500 rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from openrs_pl.data.sources import BUNDLED_PREFIX, load_problems


@dataclass(frozen=True)
class BenchmarkSpec:
    """A bundled benchmark: its file, its expected row count and how its gold answer is parsed.

    ``gold_mode`` follows the recipe's lighteval tasks: ``"expr"`` (ExprExtractionConfig) for the integer-answer
    contests AIME24/AMC23, ``"latex"`` (LatexExtractionConfig) for MATH-500, Minerva and OlympiadBench.
    """

    name: str
    bundled: str
    count: int
    gold_mode: Literal["latex", "expr"]


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        BenchmarkSpec("aime24", "aime24", 30, "expr"),
        BenchmarkSpec("math500", "math500", 500, "latex"),
        BenchmarkSpec("amc23", "amc23", 40, "expr"),
        BenchmarkSpec("minerva", "minerva", 272, "latex"),
        BenchmarkSpec("olympiadbench", "olympiadbench", 675, "latex"),
    )
}


def load_benchmark(name: str) -> list[dict[str, Any]]:
    """The rows of benchmark ``name``, each with ``"id"``, ``"problem"`` and the grading gold ``"answer"``.

    Other source columns (``solution``, ``answer_deepscaler``, ``final_answer``, ...) are kept unchanged.

    Raises:
        ValueError: ``name`` is unknown (the message lists the known ones), a row is bad, the row count is not
            the expected one, or ids repeat.

    >>> rows = load_benchmark("aime24")
    >>> len(rows), rows[0]["answer"]
    (30, '204')
    """
    spec = BENCHMARKS.get(name)
    if spec is None:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    rows = load_problems(BUNDLED_PREFIX + spec.bundled, on_bad_row="error")
    if len(rows) != spec.count:
        raise ValueError(f"benchmark {name!r} has {len(rows)} rows, expected {spec.count}: the bundled file changed")
    ids = [row["id"] for row in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"benchmark {name!r} has {len(ids) - len(set(ids))} repeated ids")
    return rows
