"""ValidationPassAtK: exact pass@1 through a rollout callback's engine, and logging on schedule inside a real fit."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from eval.scripted import ScriptedEngine
from lightning.pytorch.loggers import CSVLogger
from transformers import AutoModelForCausalLM, AutoTokenizer

from openrs_pl.data.benchmarks import load_benchmark
from openrs_pl.metrics.validation import ValidationPassAtK
from openrs_pl.rewards import RewardSpec
from openrs_pl.rollout.callback import RolloutCallback


class TinyPolicyModule(L.LightningModule):
    """Just enough of the GRPO module for the callback: ``policy``, ``tokenizer`` and a trivial loss."""

    def __init__(self, model_dir: Path) -> None:
        super().__init__()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.policy = AutoModelForCausalLM.from_pretrained(model_dir)
        self.pad_token_id = self.tokenizer.pad_token_id
        self.name_or_path = str(model_dir)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.policy.model.embed_tokens.weight.sum() * 0.0 + batch.sum() * 0.0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.policy.parameters(), lr=0.0)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.zeros(16, 1), batch_size=1)


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
