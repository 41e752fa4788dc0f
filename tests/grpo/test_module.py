"""GRPOModule: a single optimizer step moves the policy in the direction the advantages say."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from openrs_pl.grpo.config import GRPOConfig, OptimConfig
from openrs_pl.grpo.loss import grpo_loss
from openrs_pl.grpo.module import GRPOModule
from openrs_pl.rewards import RewardSpec
from openrs_pl.rollout.assemble import assemble_rollout
from openrs_pl.rollout.callback import RolloutCallback
from openrs_pl.rollout.types import ROLLOUT_KEY, GenerationOutput, RolloutBatch


class InjectRollout(L.Callback):
    """Stands in for RolloutCallback: hands the module a fixed, hand-made rollout."""

    def __init__(self, rollout: RolloutBatch) -> None:
        self.rollout = rollout

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        batch[ROLLOUT_KEY] = self.rollout


def make_module(model_dir: Path, beta: float = 0.0, lr: float = 1e-2, **grpo: object) -> GRPOModule:
    module = GRPOModule(
        name_or_path=str(model_dir),
        grpo=GRPOConfig(micro_batch_size=2, beta=beta, **grpo),
        optim=OptimConfig(lr=lr, warmup_ratio=0.0, min_lr_rate=1.0),
        temperature=1.0,
        max_completion_length=8,
    )
    module.load_models()
    return module


def fixed_rollout(module: GRPOModule, advantages: list[float]) -> RolloutBatch:
    tok = module.tokenizer
    prompt = tok("What is 1 + 1?", add_special_tokens=False).input_ids
    good = tok("2\n</think>\n\\boxed{2}", add_special_tokens=False).input_ids + [tok.eos_token_id]
    bad = tok("7 7 7", add_special_tokens=False).input_ids + [tok.eos_token_id]
    gen = GenerationOutput(completion_ids=[good, bad], finished=[True, True])
    rewards = torch.tensor([1.0, 0.0])
    return assemble_rollout([prompt], gen, rewards, rewards[:, None], torch.tensor(advantages), 2, module.pad_token_id)


def sequence_logprobs(module: GRPOModule, rollout: RolloutBatch) -> torch.Tensor:
    with torch.no_grad():
        return (module._logprobs(module.policy, rollout) * rollout.completion_mask).sum(dim=1)  # [N]


def fit_one_step(module: GRPOModule, rollout: RolloutBatch, tmp_path: Path) -> None:
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        callbacks=[InjectRollout(rollout)], default_root_dir=tmp_path, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader([{"prompt_ids": [[1]]}], batch_size=None))


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_one_step_follows_the_advantage_sign(tiny_model_dir: Path, tmp_path: Path, loss_type: str) -> None:
    module = make_module(tiny_model_dir, loss_type=loss_type)
    rollout = fixed_rollout(module, advantages=[1.0, -1.0])
    before = sequence_logprobs(module, rollout)
    old_token_logprobs = module._logprobs(module.policy, rollout).detach()
    weights = {k: v.clone() for k, v in module.policy.state_dict().items()}

    fit_one_step(module, rollout, tmp_path)

    after = sequence_logprobs(module, rollout)
    assert after[0] > before[0], "the completion with positive advantage must become more likely"
    assert after[1] < before[1], "the completion with negative advantage must become less likely"
    assert any(not torch.equal(weights[k], v) for k, v in module.policy.state_dict().items())
    # The surrogate on the same fixed batch, against the pre-step policy, is lower after the step.
    new_token_logprobs = module._logprobs(module.policy, rollout).detach()
    loss = {
        name: grpo_loss(lp, old_token_logprobs, None, rollout.advantages, rollout.completion_mask, beta=0.0).loss
        for name, lp in (("before", old_token_logprobs), ("after", new_token_logprobs))
    }
    assert loss["after"] < loss["before"]


def test_reference_is_frozen_and_not_checkpointed(tiny_model_dir: Path, tmp_path: Path) -> None:
    module = make_module(tiny_model_dir, beta=0.04)
    ref = module.reference
    assert ref is not None and not ref.training
    assert all(not p.requires_grad for p in ref.parameters())
    assert not any(k.startswith("_reference") for k in module.state_dict())
    ref_before = {k: v.clone() for k, v in ref.state_dict().items()}
    fit_one_step(module, fixed_rollout(module, [1.0, -1.0]), tmp_path)
    assert all(torch.equal(ref_before[k], v) for k, v in ref.state_dict().items())


def test_beta_zero_loads_no_reference(tiny_model_dir: Path) -> None:
    assert make_module(tiny_model_dir, beta=0.0).reference is None


def test_missing_rollout_callback_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    module = make_module(tiny_model_dir)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, default_root_dir=tmp_path
    )
    with pytest.raises(RuntimeError, match="RolloutCallback"):
        trainer.fit(module, train_dataloaders=DataLoader([{"prompt_ids": [[1]]}], batch_size=None))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda d: RolloutCallback(rewards=[RewardSpec("no_such_reward")]), "no_such_reward"),
        (lambda d: RolloutCallback(rewards=[]), "rewards is empty"),
        (lambda d: RolloutCallback(rewards=[RewardSpec("format")], num_generations=1), "num_generations must be >= 2"),
        (lambda d: GRPOModule(name_or_path="./does/not/exist"), "no such local model folder"),
        (lambda d: GRPOModule(name_or_path=str(d)).policy, "no attribute 'policy'"),  # loads in setup
    ],
)
def test_bad_config_fails_before_loading(tiny_model_dir: Path, build, message: str, monkeypatch) -> None:
    def no_loading(*args, **kw):
        raise AssertionError("a model was loaded before the config was validated")

    monkeypatch.setattr("openrs_pl.grpo.module.AutoModelForCausalLM.from_pretrained", no_loading)
    monkeypatch.setattr("openrs_pl.grpo.module.AutoTokenizer.from_pretrained", no_loading)
    with pytest.raises((ValueError, AttributeError, FileNotFoundError), match=message):
        build(tiny_model_dir)


def test_batch_must_split_into_micro_batches() -> None:
    with pytest.raises(ValueError, match="not divisible by model.grpo.micro_batch_size"):
        GRPOConfig(micro_batch_size=5).check_batch(24)
    GRPOConfig(micro_batch_size=6).check_batch(24)  # the recipe: 4 prompts x 6 completions


def test_export_is_a_plain_hf_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    module = make_module(tiny_model_dir)
    out = module.export_hf(tmp_path / "hf")
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    for k, v in module.policy.state_dict().items():
        assert torch.equal(reloaded.state_dict()[k], v)


def test_deepspeed_gets_the_clip_norm_in_its_config(tiny_model_dir: Path) -> None:
    """DeepSpeed clips inside its engine from its config; Lightning's clip_gradients is a no-op there."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DeepSpeedStrategy

    # The strategy's __init__ needs deepspeed installed (GPU extra); the hook only reads and fills its config.
    strategy = DeepSpeedStrategy.__new__(DeepSpeedStrategy)
    strategy.config = {"zero_optimization": {"stage": 2}}
    module = make_module(tiny_model_dir)
    assert module.optim.max_grad_norm == 1.0
    module.trainer = SimpleNamespace(strategy=strategy, datamodule=None)  # type: ignore[assignment]
    module.setup("fit")
    assert strategy.config["gradient_clipping"] == 1.0
