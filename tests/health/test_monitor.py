"""TrainingHealth on real tiny-model runs: each condition is induced for real and triggers its configured action."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import lightning as L
import pytest
import torch

from openrs_pl.cli import cli_main
from openrs_pl.health import TrainingHealth

pytestmark = pytest.mark.slow


def write_problems(path: Path, n: int = 16) -> Path:
    rows = [{"problem": f"What is {a} + {a + 1}?", "answer": str(2 * a + 1)} for a in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build(
    model_dir: Path, data: Path, tmp_path: Path, health: TrainingHealth, *extra: str, max_steps: int = 4, every: int = 9
):
    """The real CLI path (tiny_cpu.yaml, a checkpoint every ``every`` steps), with its TrainingHealth replaced."""
    config = tmp_path / "tiny.yaml"
    text = Path("configs/tiny_cpu.yaml").read_text()
    text, n = re.subn(r"(ModelCheckpoint\n\s+init_args: \{every_n_train_steps:) \d+", rf"\g<1> {every}", text)
    assert n == 1
    config.write_text(text)
    cli = cli_main(
        [
            "--config", str(config), "--model.name_or_path", str(model_dir), "--data.source", str(data),
            "--trainer.max_steps", str(max_steps), "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
            "--rollout.max_completion_length", "8", "--data.prompts_per_step", "2",
            "--model.grpo.micro_batch_size", "12", *extra,
        ],
        run=False,
    )  # fmt: skip
    callbacks = cli.trainer.callbacks
    shipped = [cb for cb in callbacks if isinstance(cb, TrainingHealth)]
    assert len(shipped) == 1, "tiny_cpu.yaml should configure one TrainingHealth"
    callbacks[callbacks.index(shipped[0])] = health
    return cli


def fit(cli) -> None:
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)


class PoisonAdvantages(L.Callback):
    """At one step, puts a NaN into the rollout's advantages (after RolloutCallback built it), and records the
    weights and optimizer state before and after that step."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step and not self.before:
            batch.rollout.advantages[0] = float("nan")
            self.before = _snapshot(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.before and not self.after:
            self.after = _snapshot(trainer, pl_module)


def _snapshot(trainer, pl_module) -> dict[str, torch.Tensor]:
    state = {f"w.{k}": v.detach().clone() for k, v in pl_module.policy.state_dict().items()}
    for i, s in trainer.optimizers[0].state_dict()["state"].items():
        state |= {f"opt.{i}.{k}": torch.as_tensor(v).clone() for k, v in s.items()}
    return state


def test_nan_in_a_step_is_skipped_weights_and_optimizer_untouched(tiny_model_dir, tmp_path, caplog) -> None:
    health = TrainingHealth(on_nonfinite="skip")
    cli = build(tiny_model_dir, write_problems(tmp_path / "t.jsonl"), tmp_path, health, max_steps=3)
    poison = PoisonAdvantages(at_step=1)
    cli.trainer.callbacks.append(poison)
    with caplog.at_level(logging.WARNING, logger="openrs_pl.health"):
        fit(cli)
    assert poison.before and poison.after.keys() == poison.before.keys()
    changed = [k for k in poison.before if not torch.equal(poison.before[k], poison.after[k])]
    assert not changed, f"a skipped step changed {changed[:3]}"
    assert health.skipped_steps == 1 and health.counts["nonfinite"] == 1
    # The skipped batch did not count: three real optimizer steps were still taken, all weights finite.
    assert cli.trainer.global_step == 3
    assert all(p.isfinite().all() for p in cli.model.policy.parameters())
    assert "non-finite loss at step 1: optimizer step skipped" in caplog.text


def test_without_health_the_same_nan_poisons_the_weights(tiny_model_dir, tmp_path) -> None:
    """Negative control: the skip above is the monitor's doing."""
    cli = build(
        tiny_model_dir, write_problems(tmp_path / "t.jsonl"), tmp_path, TrainingHealth(on_nonfinite="off"), max_steps=2
    )
    cli.trainer.callbacks.append(PoisonAdvantages(at_step=1))
    fit(cli)
    assert not all(p.isfinite().all() for p in cli.model.policy.parameters())


class ScaleAdvantages(L.Callback):
    """At one step, multiplies the rollout's advantages (a reward on a wildly different scale): the gradient
    norm jumps by the same factor."""

    def __init__(self, at_step: int, factor: float) -> None:
        self.at_step, self.factor = at_step, factor

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            batch.rollout.advantages.mul_(self.factor)


def test_grad_norm_spike_stops_the_run(tiny_model_dir, tmp_path, caplog) -> None:
    health = TrainingHealth(window=3, on_grad_spike="stop", grad_norm_floor=0.0)
    cli = build(
        tiny_model_dir, write_problems(tmp_path / "t.jsonl"), tmp_path, health,
        "--rollout.rewards", "[{name: cosine, kwargs: {max_len: 8, gold_field: answer}}]", max_steps=8,
    )  # fmt: skip
    cli.trainer.callbacks.append(ScaleAdvantages(at_step=4, factor=1000.0))
    with caplog.at_level(logging.WARNING, logger="openrs_pl.health"):
        fit(cli)
    assert health.counts["grad_spike"] == 1 and cli.trainer.global_step == 5
    assert "grad spike at step 5: train/grad_norm" in caplog.text and "stopping at step 5" in caplog.text


class PoisonParameter(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 1:
            with torch.no_grad():
                next(pl_module.policy.parameters()).view(-1)[0] = float("nan")


def test_poisoned_weights_stop_the_run_with_a_report(tiny_model_dir, tmp_path, caplog) -> None:
    health = TrainingHealth(on_nonfinite="stop")
    cli = build(tiny_model_dir, write_problems(tmp_path / "t.jsonl"), tmp_path, health, max_steps=5)
    cli.trainer.callbacks.append(PoisonParameter())
    with caplog.at_level(logging.WARNING, logger="openrs_pl.health"):
        fit(cli)
    assert cli.trainer.global_step == 1  # the poisoned step was not applied, and nothing after it ran
    assert health.skipped_steps == 1 and "non-finite loss at step 1" in health.stop_reason
    assert "stopping at step 1: non-finite loss" in caplog.text
    assert "no checkpoint has been written yet" in caplog.text


def test_truncating_everything_stops_the_run(tiny_model_dir, tmp_path, caplog) -> None:
    # A random tiny model never says EOS within 2 tokens: every completion is cut at the limit.
    health = TrainingHealth(window=2, on_truncation="stop")
    cli = build(
        tiny_model_dir, write_problems(tmp_path / "t.jsonl"), tmp_path, health,
        "--rollout.max_completion_length", "2", max_steps=6,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="openrs_pl.health"):
        fit(cli)
    assert cli.trainer.global_step == 2  # judged once the 2-step window was full, then stopped
    assert health.counts["truncation"] == 1
    assert "truncation at step 2: 100% of completions hit the 2-token limit" in caplog.text
    assert "stopping at step 2" in caplog.text


def test_truncation_warns_once_and_keeps_training(tiny_model_dir, tmp_path, caplog) -> None:
    health = TrainingHealth(window=2, on_truncation="warn")
    cli = build(
        tiny_model_dir, write_problems(tmp_path / "t.jsonl"), tmp_path, health,
        "--rollout.max_completion_length", "2", max_steps=4,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="openrs_pl.health"):
        fit(cli)
    assert cli.trainer.global_step == 4
    assert health.counts["truncation"] == 3  # steps 2, 3, 4
    assert caplog.text.count("truncation at step") == 1  # printed once
    metrics = (Path(cli.trainer.logger.log_dir) / "metrics.csv").read_text()
    assert "health/truncation" in metrics


@pytest.fixture(scope="module")
def warm_started(tmp_path_factory) -> tuple[Path, Path]:
    """The demo's warm start, shortened: a tiny model right on ~25 % of single-digit sums."""
    from openrs_pl.demo import make_problems, warm_start
    from openrs_pl.models.tiny import save_tiny_checkpoint

    out = tmp_path_factory.mktemp("demo")
    train, _ = make_problems(42, n_heldout=100)
    data = out / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in train))
    return warm_start(save_tiny_checkpoint(out / "base"), out / "sft", train, steps=120, seed=42), data


class RaiseLearningRate(L.Callback):
    """From one step on, the learning rate is ``factor`` times higher (the schedule keeps the new scale)."""

    def __init__(self, at_step: int, factor: float) -> None:
        self.at_step, self.factor = at_step, factor

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            for group in trainer.optimizers[0].param_groups:
                group["lr"] *= self.factor
            scheduler = trainer.lr_scheduler_configs[0].scheduler
            scheduler.base_lrs = [lr * self.factor for lr in scheduler.base_lrs]


class RecordRollback(L.Callback):
    """Right after each rollback: the policy's weights, to compare with the checkpoint it was restored from."""

    def __init__(self, health: TrainingHealth) -> None:
        self.health = health
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.health.rollbacks > len(self.weights):
            self.weights.append({k: v.clone() for k, v in pl_module.state_dict().items()})


def test_accuracy_collapse_from_a_high_lr_rolls_back_with_a_lower_lr(warm_started, tmp_path, caplog) -> None:
    sft, data = warm_started
    health = TrainingHealth(window=2, collapse_drop=0.5, on_collapse="rollback", rollback_lr_factor=0.05)
    cli = build(
        sft, data, tmp_path, health,
        "--rollout.max_completion_length", "40", "--data.prompts_per_step", "16",
        "--model.grpo.micro_batch_size", "48", "--model.optim.lr", "1e-4", "--model.optim.warmup_ratio", "0",
        "--model.optim.min_lr_rate", "1.0", max_steps=10, every=1,
    )  # fmt: skip
    record = RecordRollback(health)
    cli.trainer.callbacks[:0] = [RaiseLearningRate(at_step=4, factor=30.0)]
    cli.trainer.callbacks.insert(cli.trainer.callbacks.index(health) + 1, record)
    with caplog.at_level(logging.WARNING, logger="openrs_pl.health"):
        fit(cli)
    assert health.counts["collapse"] >= 1 and health.rollbacks == 1, caplog.text
    assert "collapse at step" in caplog.text and "rolled back to" in caplog.text
    # The same jump in learning rate makes the KL spike (warned, training goes on).
    assert health.counts["kl_spike"] >= 1 and "kl spike at step" in caplog.text
    restored_from = caplog.text.split("rolled back to ")[1].split(" ")[0]
    saved = torch.load(restored_from, map_location="cpu", weights_only=False)
    assert saved["global_step"] <= 4, "restored a checkpoint written after the learning rate was raised"
    for name, tensor in record.weights[0].items():
        assert torch.equal(tensor, saved["state_dict"][name]), name
    # 1e-4 x 30 after step 4, then x 0.05 at the rollback.
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-4 * 30 * 0.05)
