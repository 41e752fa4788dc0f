"""ValidationPassAtK: exact pass@1 through a rollout callback's engine, and logging on schedule inside a real fit."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
from lightning.pytorch.loggers import CSVLogger
from transformers import AutoTokenizer

from openrs_pl.data.benchmarks import load_benchmark
from openrs_pl.eval.validation import ValidationPassAtK
from openrs_pl.rewards import RewardSpec
from openrs_pl.rollout.callback import RolloutCallback

from .scripted import ScriptedEngine, TinyPolicyModule


def policy_stub(tokenizer) -> SimpleNamespace:
    """The rollout side's view of a module (PolicySource), without a model: the scripted engine needs none."""
    return SimpleNamespace(
        policy=None, tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id, name_or_path="", device="cpu"
    )


def test_pass_at_1_through_the_rollout_engine(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    benches = ["aime24", "amc23"]
    callback = ValidationPassAtK(benchmarks=benches, num_problems=3, samples=4, max_tokens=64)
    rollout = RolloutCallback(rewards=[RewardSpec("format")], engine="hf")
    rollout.engine = ScriptedEngine(tokenizer, {r["problem"]: r["answer"] for b in benches for r in load_benchmark(b)})
    trainer = SimpleNamespace(global_step=7, global_rank=0, world_size=1, callbacks=[callback, rollout])
    module = policy_stub(tokenizer)
    scores = callback.evaluate(trainer, module)  # type: ignore[arg-type]
    # The engine answers 1 of 4 samples right on every problem: pass@1 is exactly 1/4 everywhere.
    assert {k: round(v.item(), 6) for k, v in scores.items()} == {
        "val/pass@1/aime24": 0.25,
        "val/pass@1/amc23": 0.25,
        "val/pass@1/avg": 0.25,
    }
    assert rollout.engine.requests == [(6, 4)]  # 3 problems x 2 benchmarks, all samples in one request


def test_rank_slices_cover_each_problem_once(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    callback = ValidationPassAtK(benchmarks=["aime24"], num_problems=5, samples=1)
    asked = []
    for rank in range(2):
        engine = ScriptedEngine(tokenizer, {r["problem"]: r["answer"] for r in load_benchmark("aime24")})
        rollout = RolloutCallback(rewards=[RewardSpec("format")], engine="hf")
        rollout.engine = engine
        # No process group is initialised, so the metric does not gather: each rank's own slice is scored.
        trainer = SimpleNamespace(global_step=1, global_rank=rank, world_size=2, callbacks=[rollout])
        module = policy_stub(tokenizer)
        callback.evaluate(trainer, module)  # type: ignore[arg-type]
        asked.append({p for p in engine.problems if any(p in tokenizer.decode(ids) for ids in engine.prompts)})
    assert [len(a) for a in asked] == [3, 2]
    assert asked[0] | asked[1] == {r["problem"] for r in load_benchmark("aime24")[:5]}


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="unknown benchmark 'gsm8k'"):
        ValidationPassAtK(benchmarks=["gsm8k"])
    with pytest.raises(ValueError, match="every_n_steps"):
        ValidationPassAtK(every_n_steps=0)


def test_logs_on_schedule_during_fit(tiny_model_dir: Path, tmp_path: Path) -> None:
    callback = ValidationPassAtK(benchmarks=["aime24", "amc23"], num_problems=2, every_n_steps=2, max_tokens=8)
    trainer = L.Trainer(
        max_steps=5, accelerator="cpu", logger=CSVLogger(tmp_path), callbacks=[callback],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(TinyPolicyModule(tiny_model_dir))
    rows = list(csv.DictReader((Path(trainer.logger.log_dir) / "metrics.csv").open()))
    logged_steps = sorted({int(r["step"]) for r in rows if r.get("val/pass@1/avg")})
    # Checks after optimizer steps 2 and 4 (logged at the next batch start), then once more at fit end (step 5).
    assert logged_steps[-1] == 5 and len(logged_steps) == 3
    for r in rows:
        if r.get("val/pass@1/avg"):
            values = [float(r["val/pass@1/aime24"]), float(r["val/pass@1/amc23"])]
            assert float(r["val/pass@1/avg"]) == pytest.approx(sum(values) / 2)
    assert "val/pass@1/avg" in trainer.callback_metrics


def test_checks_when_global_step_jumps_over_a_multiple() -> None:
    """num_iterations = 3 advances global_step by 3 per batch: checks at 6, 12, 15 (first steps at/past 5, 10, 15)."""
    callback = ValidationPassAtK(benchmarks=["aime24"], num_problems=1, every_n_steps=5)
    checked = []

    def fake_evaluate(trainer, pl_module):
        callback._last_step = trainer.global_step
        checked.append(trainer.global_step)
        return {}

    callback.evaluate = fake_evaluate  # type: ignore[method-assign]
    callback._write_to_loggers = lambda trainer, scores: None  # type: ignore[method-assign]
    for step in range(0, 16, 3):
        callback.on_train_batch_start(SimpleNamespace(global_step=step), None, None, 0)  # type: ignore[arg-type]
    assert checked == [6, 12, 15]


BENCHMARKS = ("aime24", "amc23")
NUM_PROBLEMS = 5
SAMPLES = 2


def pass_at_1(answered: dict[str, list[bool]], benchmark: str, num_problems: int) -> float:
    """Mean over the benchmark's first problems present in ``answered`` of the fraction of right samples."""
    problems = [r["problem"] for r in load_benchmark(benchmark)[:num_problems] if r["problem"] in answered]
    return sum(sum(answered[p]) / len(answered[p]) for p in problems) / len(problems)


@pytest.mark.slow
def test_two_rank_ddp_pass_at_1_is_over_both_ranks_samples(tiny_model_dir: Path, tmp_path: Path) -> None:
    root = Path(__file__).parents[2]
    env = os.environ | {"PYTHONPATH": str(root), "OPENRS_GRADING_WORKERS": "1", "OMP_NUM_THREADS": "1"}
    script = str(root / "tests/eval/ddp_validation.py")
    proc = subprocess.run(
        [sys.executable, script, str(tiny_model_dir), str(tmp_path), str(NUM_PROBLEMS), str(SAMPLES), *BENCHMARKS],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    answered = [r["answered"] for r in ranks]
    # The ranks split the problems: each of the first NUM_PROBLEMS of each benchmark was sampled on exactly one.
    assert not set(answered[0]) & set(answered[1])
    union = answered[0] | answered[1]
    assert set(union) == {r["problem"] for b in BENCHMARKS for r in load_benchmark(b)[:NUM_PROBLEMS]}
    assert all(len(flags) == SAMPLES for flags in union.values())

    expected = {f"val/pass@1/{b}": pass_at_1(union, b, NUM_PROBLEMS) for b in BENCHMARKS}
    expected["val/pass@1/avg"] = sum(expected.values()) / len(BENCHMARKS)
    rows = [r for r in csv.DictReader((tmp_path / "val/version_0/metrics.csv").open()) if r.get("val/pass@1/avg")]
    assert [int(r["step"]) for r in rows] == [1, 2]  # the check after step 1, and the one at fit end
    for row in rows:
        assert {k: float(row[k]) for k in expected} == pytest.approx(expected, abs=1e-6)
    for rank in ranks:  # every rank ends with the same, gathered value
        assert rank["metrics"] == pytest.approx(expected, abs=1e-6)
    # The scripted answers tell a one-rank or averaged-over-ranks value apart from the gathered one (aime24: 0.6
    # over all problems, 0.5 and 0.75 on each rank, 0.625 averaged over ranks) by far more than the 1e-6 above.
    for b in BENCHMARKS:
        own = [pass_at_1(a, b, NUM_PROBLEMS) for a in answered]
        assert min(abs(v - expected[f"val/pass@1/{b}"]) for v in [*own, sum(own) / 2]) > 0.02
