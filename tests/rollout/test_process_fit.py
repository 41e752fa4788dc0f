"""``openrs-pl fit`` with the generator in its own process: the same completions as the in-process HF engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from processes import gone_within

from openrs_pl.cli import cli_main
from openrs_pl.rollout.callback import RolloutCallback
from openrs_pl.rollout.process_engine import ProcessEngine


def write_data(root: Path) -> Path:
    data = root / "train.jsonl"
    data.write_text(
        "".join(json.dumps({"problem": f"What is {a} + 2?", "answer": str(a + 2)}) + "\n" for a in range(12))
    )
    return data


def fit(model_dir: Path, root: Path, monkeypatch: pytest.MonkeyPatch, *extra: str) -> tuple[list[Any], Any]:
    """A 3-step fit on the tiny model; returns each step's completion ids and the CLI."""
    recorded: list[Any] = []
    score = RolloutCallback.score

    def recording_score(self, trainer, pl_module, batch, generation, sampling=None):  # type: ignore[no-untyped-def]
        recorded.append(generation.completion_ids)
        return score(self, trainer, pl_module, batch, generation, sampling)

    monkeypatch.setattr(RolloutCallback, "score", recording_score)
    data = write_data(root)
    cli = cli_main(
        [
            "fit", "--config", "configs/tiny_cpu.yaml",
            "--model.name_or_path", str(model_dir), "--data.source", str(data),
            "--trainer.max_steps", "3", "--trainer.default_root_dir", str(root),
            "--trainer.logger.init_args.save_dir", str(root), "--trainer.enable_checkpointing", "false",
            "--trainer.callbacks", "[]", "--rollout.max_completion_length", "16",
            "--data.prompts_per_step", "2", "--model.grpo.micro_batch_size", "12", "--model.optim.lr", "1e-2",
            # A random model is never right; cosine still scores wrong answers by length, so advantages are
            # non-zero and the policy really moves between steps.
            "--rollout.rewards", "[{name: cosine, kwargs: {max_len: 40, gold_field: answer}}]",
            *extra,
        ]
    )  # fmt: skip
    return recorded, cli


def rewards(cli: Any) -> list[float]:
    metrics = pd.read_csv(Path(cli.trainer.logger.log_dir) / "metrics.csv")
    return metrics["train/reward/mean"].dropna().tolist()


@pytest.fixture(scope="module")
def hf_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Any], list[float]]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        completions, cli = fit(tiny_model_dir, tmp_path_factory.mktemp("hf"), monkeypatch, "--rollout.engine", "hf")
    return completions, rewards(cli)


def test_process_engine_fit_samples_what_the_hf_engine_samples(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hf_run
) -> None:
    completions, cli = fit(tiny_model_dir, tmp_path, monkeypatch, "--rollout.engine", "process")
    assert cli.trainer.global_step == 3
    # Seeded sampling from the same weights, one thread each side: token for token the same, hence equal rewards.
    assert completions == hf_run[0]
    assert rewards(cli) == hf_run[1]
    assert len(hf_run[1]) == 3


@pytest.mark.slow
def test_without_weight_pushes_the_generator_samples_from_stale_weights(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hf_run
) -> None:
    # Negative control of the test above: it can only pass if every step's weights reach the generator.
    monkeypatch.setattr(ProcessEngine, "sync_weights", lambda self, policy, force=False: None)
    completions, _ = fit(tiny_model_dir, tmp_path, monkeypatch, "--rollout.engine", "process")
    assert completions[0] == hf_run[0][0], "step 1: both sample the starting weights"
    assert completions[1:] != hf_run[0][1:]


def test_a_failed_fit_stops_the_generator_process(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pids: list[int | None] = []
    for_policy = ProcessEngine.for_policy

    def recording_for_policy(*args: Any, **kwargs: Any) -> ProcessEngine:
        engine = for_policy(*args, **kwargs)
        pids.append(engine.pid)
        return engine

    def failing_score(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("reward server down")

    monkeypatch.setattr(ProcessEngine, "for_policy", recording_for_policy)
    monkeypatch.setattr(RolloutCallback, "score", failing_score)
    with pytest.raises(RuntimeError, match="reward server down"):
        cli_main(
            [
                "fit", "--config", "configs/tiny_cpu.yaml", "--model.name_or_path", str(tiny_model_dir),
                "--data.source", str(write_data(tmp_path)), "--trainer.max_steps", "1",
                "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
                "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]",
                "--data.prompts_per_step", "2", "--model.grpo.micro_batch_size", "12",
                "--rollout.engine", "process",
            ]
        )  # fmt: skip
    assert len(pids) == 1 and pids[0] is not None
    assert gone_within(pids[0], 5.0), "the generator outlived the failed fit in the same interpreter"
