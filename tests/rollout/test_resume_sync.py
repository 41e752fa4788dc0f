"""A resumed fit pushes the restored policy into an engine that holds its own weights, before its first rollout.

vLLM loads the base weights from ``model.name_or_path`` when it starts; on ``--ckpt_path`` the
``RolloutCallback`` must force a sync in ``on_train_start``. Here a stand-in for vLLM with the same weight
semantics (its own copy of the model, loaded from the path, changed only by ``sync_weights``) runs on any machine,
so the resume path is tested without vllm installed; ``tests/health/test_vllm_resume.py`` repeats it with vLLM.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from openrs_pl.cli import cli_main
from openrs_pl.rollout.hf_engine import HFEngine
from openrs_pl.rollout.types import GenerationOutput, SamplingConfig

EVERY_STEP = (
    "[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {every_n_train_steps: 1, save_top_k: -1,"
    " filename: 'step{step}', auto_insert_metric_name: false}}]"
)
COMPARED = ["train/reward/mean", "train/completions/mean_length", "train/loss", "train/kl", "train/grad_norm"]


class OwnWeightsEngine(HFEngine):
    """Samples from its own copy of the model, loaded from the model path at start and changed only by syncs."""

    started: ClassVar[list[OwnWeightsEngine]] = []

    def __init__(self, model: str, config: Any = None, seed: int = 0, local_rank: int = 0) -> None:
        super().__init__(AutoModelForCausalLM.from_pretrained(model))
        self.events: list[tuple[str, bool]] = []  # ("sync", force) and ("generate", False), in call order
        self.synced: list[dict[str, torch.Tensor]] = []  # the weights each sync pushed
        OwnWeightsEngine.started.append(self)

    def sync_weights(self, policy: nn.Module, force: bool = False) -> None:
        self.model.load_state_dict(policy.state_dict())
        self.events.append(("sync", force))
        self.synced.append({k: v.detach().clone() for k, v in policy.state_dict().items()})

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> GenerationOutput:
        self.events.append(("generate", False))
        return super().generate(prompt_ids, sampling)


def fit(model_dir: Path, data: Path, out: Path, steps: int, *extra: str) -> Path:
    cli = cli_main(
        [
            "fit", "--config", "configs/tiny_cpu.yaml", "--model.name_or_path", str(model_dir),
            "--data.source", str(data), "--trainer.max_steps", str(steps),
            "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
            "--trainer.callbacks", EVERY_STEP, "--rollout.max_completion_length", "8",
            "--data.prompts_per_step", "2", "--model.grpo.micro_batch_size", "12", "--model.optim.lr", "1e-3",
            "--rollout.engine", "vllm", "--rollout.vllm.device", "cpu",
            # A random model is never right; cosine still scores wrong answers by length: non-zero advantages.
            "--rollout.rewards", "[{name: cosine, kwargs: {max_len: 8, gold_field: answer}}]", *extra,
        ]
    )  # fmt: skip
    assert cli.trainer.global_step == steps
    return Path(cli.trainer.logger.log_dir)


@pytest.fixture
def own_weights_engine(monkeypatch: pytest.MonkeyPatch) -> type[OwnWeightsEngine]:
    OwnWeightsEngine.started.clear()
    monkeypatch.setattr("openrs_pl.rollout.vllm_engine.VLLMEngine", OwnWeightsEngine)
    return OwnWeightsEngine


def test_resume_forces_a_sync_of_the_checkpoint_before_the_first_rollout(
    tiny_model_dir: Path, tmp_path: Path, own_weights_engine: type[OwnWeightsEngine]
) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(json.dumps({"problem": f"What is {a} + 2?", "answer": str(a + 2)}) + "\n" for a in range(8))
    )
    whole = fit(tiny_model_dir, data, tmp_path / "whole", 3)
    checkpoint = whole / "checkpoints" / "step2.ckpt"  # the same max_steps (and so the same lr schedule)
    resumed = fit(tiny_model_dir, data, tmp_path / "resumed", 3, "--ckpt_path", str(checkpoint))

    engine = own_weights_engine.started[-1]
    # The resumed engine's first act is a forced sync (not a step-end one, whose sync_every may skip it), and it
    # pushes exactly the checkpoint's policy.
    assert engine.events[:2] == [("sync", True), ("generate", False)]
    saved = torch.load(checkpoint, weights_only=False)["state_dict"]
    assert all(torch.equal(v, saved[f"policy.{k}"]) for k, v in engine.synced[0].items())
    # The step after the resume equals the uninterrupted run's third step.
    rows = [pd.read_csv(d / "metrics.csv").dropna(subset=["train/loss"]).set_index("step") for d in (whole, resumed)]
    assert rows[0].loc[2, COMPARED].tolist() == rows[1].loc[2, COMPARED].tolist()
    # The policy has moved by then, so an engine left on the base weights would have sampled from other weights.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert any(not torch.equal(v, saved[f"policy.{k}"]) for k, v in base.items())
