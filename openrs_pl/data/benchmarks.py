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

Seven golds are corrected when loaded (:data:`GOLD_CORRECTIONS`): written in numpy syntax, with a stray sentence
period, or with a variable name glued to the answer, they parsed to another value or to nothing. The bundled
files stay byte-identical to their sources (their sha256 is checked); the source's text stays in
``answer_source``.
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


# (benchmark, id) -> (the source's gold, the corrected gold, why). Found by the audit in tests/data/test_golds.py:
# every gold must parse, to its whole text, and to the value of the source's own final answer.
GOLD_CORRECTIONS: dict[tuple[str, int | str], tuple[str, str, str]] = {
    ("minerva", 5): (
        "np.arcsin(10/13)",
        "\\arcsin\\left(\\frac{10}{13}\\right)",
        "numpy syntax (lm-eval style); parsed as the text 'np.arcsin(10/13)', which no answer can match",
    ),
    ("minerva", 38): ("-1./3", "-\\frac{1}{3}", "numpy float literal '1.'; did not parse as a number"),
    ("minerva", 49): ("-3./2", "-\\frac{3}{2}", "numpy float literal '3.'; did not parse as a number"),
    ("olympiadbench", 1970): (
        "$(-\\infty, 0) \\cup\\{1\\}$.",
        "$(-\\infty, 0) \\cup\\{1\\}$",
        "trailing sentence period; the gold parsed as 0, so a wrong \\boxed{0} was graded correct",
    ),
    ("olympiadbench", 1782): (
        "$m_{\\max }=n^{2}-n-1$",
        "$n^{2}-n-1$",
        "the asked-for value behind a name with \\max in its subscript; parsed only as text",
    ),
    ("olympiadbench", 1965): (
        "$f(x)=a x+b$, where $b$ is an arbitrary integer, and $a$ is an arbitrary positive integer with $\\mho(a)=0$",
        "$f(x)=a x+b$",
        "the function family followed by its conditions in prose; the whole sentence parsed as 0",
    ),
    ("olympiadbench", 2045): (
        "$t(0,4]$",
        "$(0,4]$",
        "the variable t glued to the interval (t in (0,4]); parsed only as text",
    ),
}

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

    The golds in :data:`GOLD_CORRECTIONS` are replaced; every row has ``"answer_source"``, the source's gold text.
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
    for row in rows:
        row["answer_source"] = row["answer"]
        correction = GOLD_CORRECTIONS.get((name, row["id"]))
        if correction is not None:
            source, row["answer"], _ = correction
            if row["answer_source"] != source:
                raise ValueError(
                    f"benchmark {name!r} row {row['id']}: gold {row['answer_source']!r} is not the "
                    f"{source!r} GOLD_CORRECTIONS expects: the bundled file changed"
                )
    return rows
