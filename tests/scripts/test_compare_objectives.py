"""``scripts/compare_objectives.py``: summary statistics, the Markdown table, the doc block and the plot."""

from __future__ import annotations

import doctest
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compare_objectives.py"


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare_objectives", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare_objectives"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["compare_objectives"]


def test_doctests_pass(compare) -> None:
    result = doctest.testmod(compare)
    assert result.attempted >= 2 and result.failed == 0


def test_report_from_results_fills_the_doc_between_markers(compare, tmp_path: Path) -> None:
    # Two seeds of two objectives: grpo accuracy 0.3 and 0.5 -> mean 0.400, sample std 0.141.
    runs = [
        {"loss_type": lt, "seed": s, "before_accuracy": 0.2, "accuracy": acc, "mean_length": 20.0, "kl": 0.01,
         "wall_s": 30.0}
        for lt, s, acc in (("grpo", 42, 0.3), ("grpo", 43, 0.5), ("sapo", 42, 0.4), ("sapo", 43, 0.4))
    ]  # fmt: skip
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"runs": runs}))
    doc = tmp_path / "docs" / "objectives.md"
    doc.parent.mkdir()
    doc.write_text(f"# intro\n\n{compare.BEGIN}\nold table\n{compare.END}\n\n## limits\n")
    out = tmp_path / "out"
    compare.main(["--out", str(out), "--doc", str(doc), "--from-results", str(results)])
    text = doc.read_text()
    assert text.startswith("# intro") and text.endswith("## limits\n") and "old table" not in text
    assert "| grpo | 0.400 ± 0.141 |" in text and "| sapo | 0.400 ± 0.000 |" in text
    assert "seeds [42, 43]" in text and (doc.parent / "objectives.png").stat().st_size > 1000
    assert json.loads((out / "results.json").read_text())["summary"]["grpo"]["accuracy"][0] == pytest.approx(0.4)
