"""Run by tests/eval/test_validation.py: ValidationPassAtK inside a 2-process DDP fit (gloo), scripted answers.

Lightning's DDP launcher re-executes this script once per extra rank, so it must be a script, not a test. Each rank
writes which of its samples carried the gold answer and the pass@1 values it ended the fit with; rank 0's CSVLogger
writes the logged values.
Usage: python tests/eval/ddp_validation.py MODEL_DIR OUT_DIR NUM_PROBLEMS SAMPLES BENCHMARK...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
from lightning.pytorch.loggers import CSVLogger
from transformers import AutoTokenizer

from openrs_pl.data.benchmarks import load_benchmark
from openrs_pl.eval.validation import ValidationPassAtK

if TYPE_CHECKING:
    from tests.eval.scripted import ScriptedEngine


def right_samples(benchmark: int, problem: int) -> set[int]:
    """2, 1 or 0 right samples by problem: each rank's slice, and the mean of the ranks' means, differ from the
    pass@1 over all problems, so only a gather of every rank's samples logs the right value."""
    return set(range(2 - (problem + benchmark) % 3))


class Recorder(L.Callback):
    """Writes this rank's scripted answers and its final ``val/`` metrics (after ValidationPassAtK's last check)."""

    def __init__(self, out: Path, engine: ScriptedEngine) -> None:
        self.out = out
        self.engine = engine

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        record = {"answered": self.engine.answered, "metrics": metrics}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def main(model_dir: str, out: str, num_problems: str, samples: str, *benchmarks: str) -> None:
    # Here, not at the top: pytest's doctest collection imports this file without the repository root on sys.path.
    from tests.eval.scripted import ScriptedEngine, TinyPolicyModule

    problems = {b: load_benchmark(b)[: int(num_problems)] for b in benchmarks}
    golds = {r["problem"]: r["answer"] for rows in problems.values() for r in rows}
    engine = ScriptedEngine(AutoTokenizer.from_pretrained(model_dir), golds)
    engine.right_by_problem = {
        row["problem"]: right_samples(b, i) for b, rows in enumerate(problems.values()) for i, row in enumerate(rows)
    }
    validation = ValidationPassAtK(
        benchmarks=benchmarks, num_problems=int(num_problems), samples=int(samples), every_n_steps=1, max_tokens=64
    )
    validation._fallback_engine = engine  # the generation path the callback takes without a RolloutCallback
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true",
        logger=CSVLogger(out, name="val"), callbacks=[validation, Recorder(Path(out), engine)],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(TinyPolicyModule(Path(model_dir)))


if __name__ == "__main__":
    main(*sys.argv[1:])
