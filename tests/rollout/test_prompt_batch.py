"""PromptBatch, the one batch type from the DataModule through RolloutCallback to the module, in a real (fast) fit.

A scripted background engine and a stand-in module keep the fit to a fraction of a second per step, while the
DataModule (lookahead on), the rollout callback (overlap on), the reward set and Lightning's device transfer and
hooks are the real ones. The fit fails if the callback stops attaching the rollout, if a lookahead prompt list is
not the next batch's (its prefetch would go unused and be generated again), or if the reward functions see other
keys than the dataset's columns.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn

from openrs_pl.data.datamodule import ProblemDataModule
from openrs_pl.grpo.module import GRPOModule
from openrs_pl.rewards import REWARD_REGISTRY, RewardSpec
from openrs_pl.rollout.callback import RolloutCallback
from openrs_pl.rollout.types import GenerationOutput, PromptBatch, RolloutBatch, SamplingConfig

G = 2
PROMPTS_PER_STEP = 2
STEPS_PER_EPOCH = 4  # 8 problems / 2 per step


class ScriptedEngine:
    """An AsyncGenerationEngine that answers every prompt with its own last token and EOS, instantly, and records
    which prompts it was asked for, and how (``submit`` = prefetched ahead, ``generate`` = the step waited)."""

    def __init__(self) -> None:
        self.pushes = 0
        self.calls: list[tuple[str, list[list[int]]]] = []
        self._requests: dict[int, tuple[list[list[int]], SamplingConfig, int]] = {}

    @property
    def weights_version(self) -> int:
        return self.pushes

    def submit(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> int:
        self.calls.append(("submit", prompt_ids))
        return self._queue(prompt_ids, sampling)

    def _queue(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> int:
        ticket = len(self._requests) + 1000 * len(self.calls)
        self._requests[ticket] = (prompt_ids, sampling, self.pushes)
        return ticket

    def collect(self, ticket: int) -> GenerationOutput:
        prompt_ids, sampling, version = self._requests.pop(ticket)
        completions = [[ids[-1], 0] for ids in prompt_ids for _ in range(sampling.n)]
        return GenerationOutput(completions, [True] * len(completions), weights_version=version)

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> GenerationOutput:
        self.calls.append(("generate", prompt_ids))
        return self.collect(self._queue(prompt_ids, sampling))

    def sync_weights(self, policy: nn.Module, force: bool = False) -> None:
        self.pushes += 1

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...

    def close(self) -> None: ...


class RecordingPolicy(L.LightningModule):
    """A PolicySource with one parameter that records the batches ``training_step`` receives."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.tokenizer = SimpleNamespace(batch_decode=lambda ids, **kwargs: [str(row) for row in ids])
        self.pad_token_id = 0
        self.name_or_path = ""
        self.batches: list[PromptBatch] = []

    @property
    def policy(self) -> nn.Module:
        return self

    def training_step(self, batch: PromptBatch, batch_idx: int) -> torch.Tensor:
        self.batches.append(batch)
        return (self.weight**2).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture
def reward_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The keyword arguments of every call of the reward function ``recorded`` (a reward that varies in a group)."""
    calls: list[dict[str, Any]] = []

    def recorded(completions: list[str], **kwargs: Any) -> list[float]:
        calls.append(kwargs)
        return [float(i % G) for i in range(len(completions))]

    monkeypatch.setitem(REWARD_REGISTRY, "recorded", recorded)
    return calls


def test_the_callback_attaches_each_rollout_and_prefetches_the_next_batch(
    tiny_model_dir: Path, tmp_path: Path, reward_calls: list[dict[str, Any]]
) -> None:
    path = tmp_path / "problems.jsonl"
    rows = [{"problem": f"What is {k} + 1?", "answer": str(k + 1), "level": "1"} for k in range(8)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    data = ProblemDataModule(
        str(path), tokenizer=str(tiny_model_dir), prompts_per_step=PROMPTS_PER_STEP, lookahead=True
    )
    callback = RolloutCallback([RewardSpec("recorded")], num_generations=G, max_completion_length=4, overlap=True)
    engine = callback.engine = ScriptedEngine()
    callback._start_overlap()  # on_fit_start builds the engine only when none is set
    module = RecordingPolicy()
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[callback], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)

    batches = module.batches
    assert len(batches) == 2 * STEPS_PER_EPOCH
    for batch in batches:
        assert isinstance(batch.rollout, RolloutBatch), "RolloutCallback attached the step's rollout"
        expected = [ids[-1] for ids in batch.prompt_ids for _ in range(G)]
        assert batch.rollout.completion_ids[:, 0].tolist() == expected, "the rollout of this batch's prompts"
    # Each epoch's first step waits for its completions; every other step's were requested a step early from the
    # lookahead, which must be exactly that step's prompts (else they are discarded and generated again).
    waited = [i % STEPS_PER_EPOCH == 0 for i in range(len(batches))]
    assert engine.calls == [("generate" if w else "submit", b.prompt_ids) for w, b in zip(waited, batches, strict=True)]
    assert [b.next_prompt_ids for b in batches] == [
        [] if i % STEPS_PER_EPOCH == STEPS_PER_EPOCH - 1 else batches[i + 1].prompt_ids for i in range(len(batches))
    ]
    stalenesses = [b.rollout.staleness.tolist() for b in batches]  # type: ignore[union-attr]
    assert stalenesses == [[0 if w else 1] * PROMPTS_PER_STEP * G for w in waited]
    # The reward functions see the dataset's columns per completion (the prompt text as ``prompts``), nothing else.
    assert len(reward_calls) == len(batches)
    for call, batch in zip(reward_calls, batches, strict=True):
        assert set(call) == {"prompts", "completion_ids", "problem", "answer", "solution", "level"}
        assert call["answer"] == [a for a in batch.columns["answer"] for _ in range(G)]
        assert call["prompts"] == [p for p in batch.columns["prompt"] for _ in range(G)]


def test_batches_that_are_not_prompt_batches_are_named() -> None:
    callback = RolloutCallback([RewardSpec("format")], num_generations=G)
    trainer = SimpleNamespace(global_step=0, world_size=1, global_rank=0)
    with pytest.raises(TypeError, match="needs batches of openrs_pl.rollout.types.PromptBatch.*got dict"):
        callback.on_train_batch_start(trainer, None, {"prompt_ids": [[1]]}, 0)  # type: ignore[arg-type]
    overlapping = RolloutCallback([RewardSpec("format")], num_generations=G, overlap=True)
    with pytest.raises(ValueError, match="set data.lookahead"):
        overlapping.on_train_batch_start(trainer, None, PromptBatch([[1]]), 0)  # type: ignore[arg-type]


def test_a_batch_without_rollout_names_the_missing_callback(tiny_model_dir: Path) -> None:
    module = GRPOModule(str(tiny_model_dir))  # the weights are not loaded: the batch is checked first
    with pytest.raises(RuntimeError, match="add openrs_pl.rollout.RolloutCallback to trainer.callbacks"):
        module.training_step(PromptBatch([[1]], {"answer": ["2"]}), 0)
