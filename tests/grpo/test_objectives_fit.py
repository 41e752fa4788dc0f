"""The newer objective options through the installed ``openrs-pl`` console script: a real fit, and a bad value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
OPENRS_PL = Path(sys.executable).parent / "openrs-pl"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([str(OPENRS_PL), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_fit_with_dynamic_sampling_entropy_control_gdpo_and_overlong(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    rows = [{"problem": f"What is {a} + {a + 1}?", "answer": str(2 * a + 1)} for a in range(16)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rewards = (
        "[{name: format}, {name: accuracy, weight: 2.0, kwargs: {gold_field: answer}}, "
        "{name: overlong, kwargs: {max_completion_length: 12, overlong_buffer: 4}}]"
    )
    result = run_cli(
        "fit", "--config", "configs/tiny_cpu.yaml",
        "--model.name_or_path", str(tiny_model_dir), "--data.source", str(data),
        "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
        "--rollout.max_completion_length", "12", "--data.prompts_per_step", "2",
        "--model.grpo.micro_batch_size", "6", "--rollout.rewards", rewards,
        "--model.grpo.loss_type", "sapo", "--rollout.multi_objective_aggregation", "normalize_then_sum",
        "--rollout.dynamic_sampling", "true", "--rollout.dynamic_sampling_max_draws", "2",
        "--model.grpo.use_adaptive_entropy", "true", "--model.grpo.entropy_target", "100",
        "--model.grpo.top_entropy_quantile", "0.5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = pd.read_csv(next(tmp_path.glob("grpo/version_*/metrics.csv")))
    draws = metrics["train/dynamic_sampling/draws"].dropna()
    filled = metrics["train/dynamic_sampling/filled_with_zero_signal"].dropna()
    informative = metrics["train/dynamic_sampling/informative"].dropna()
    assert len(draws) == 2 and (draws <= 2).all()  # the bound holds on every step
    assert ((filled == 0) | (draws == 2)).all()  # fillers only once the draws ran out
    assert ((informative >= 2) | (filled > 0)).all()  # the batch (2 groups) is full either way
    # Entropy 0 < H < 100 = target: the coefficient climbs by entropy_coef_delta (0.005) every optimizer step.
    assert metrics["train/entropy_coef"].dropna().tolist() == pytest.approx([0.005, 0.010])
    assert metrics["train/entropy"].dropna().gt(0).all() and "train/rewards/overlong/mean" in metrics


def test_bad_objective_option_is_rejected_with_its_name(tiny_model_dir: Path) -> None:
    result = run_cli(
        "fit", "--config", "configs/tiny_cpu.yaml", "--model.name_or_path", str(tiny_model_dir),
        "--model.grpo.delta", "1.1", "--trainer.max_steps", "1",
    )  # fmt: skip
    assert result.returncode != 0 and "grpo.delta (1.1) must be > 1 + epsilon_high" in result.stderr
