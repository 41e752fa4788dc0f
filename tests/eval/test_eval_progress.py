"""``openrs-pl eval`` shows problems done/total and the running pass@1 on its progress bar."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from openrs_pl.data.benchmarks import load_benchmark
from openrs_pl.eval.run import EvalConfig, run_eval

from .scripted import ScriptedEngine


def test_bar_shows_running_pass_at_1(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = ScriptedEngine(tokenizer, {r["problem"]: r["answer"] for r in load_benchmark("amc23")[:3]})
    cfg = EvalConfig(
        model=str(tiny_model_dir), benchmarks=["amc23"], samples=2, limit=3, output_dir=str(tmp_path),
        max_new_tokens=64, chunk_problems=1,
    )  # fmt: skip
    run_eval(cfg, engine=engine)
    bar = capsys.readouterr().err
    # The scripted engine is right on sample 0 and wrong on sample 1: pass@1 = 0.5 after every problem.
    assert "3/3" in bar and "pass@1=0.500" in bar
