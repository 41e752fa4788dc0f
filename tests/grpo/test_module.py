"""GRPOModule: a single optimizer step moves the policy in the direction the advantages say."""

from __future__ import annotations

from dataclasses import replace
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
from openrs_pl.rollout.types import GenerationOutput, PromptBatch, RolloutBatch


class InjectRollout(L.Callback):
    """Stands in for RolloutCallback: hands the module a fixed, hand-made rollout."""

    def __init__(self, rollout: RolloutBatch) -> None:
        self.rollout = rollout

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        batch.rollout = self.rollout


def make_module(model_dir: Path, beta: float = 0.0, lr: float = 1e-2, **grpo: object) -> GRPOModule:
    grpo = {"micro_batch_size": 2} | grpo
    module = GRPOModule(
        name_or_path=str(model_dir),
        grpo=GRPOConfig(beta=beta, **grpo),
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
    trainer.fit(module, train_dataloaders=DataLoader([PromptBatch([[1]])], batch_size=None))


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"])
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
        trainer.fit(module, train_dataloaders=DataLoader([PromptBatch([[1]])], batch_size=None))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda d: RolloutCallback(rewards=[RewardSpec("no_such_reward")]), "no_such_reward"),
        (lambda d: RolloutCallback(rewards=[]), "rewards is empty"),
        (lambda d: RolloutCallback(rewards=[RewardSpec("format")], num_generations=1), "num_generations must be >= 2"),
        (lambda d: GRPOModule(name_or_path="./does/not/exist"), "no such local model folder"),
        (
            lambda d: GRPOModule(str(d), GRPOConfig(packing=True, share_prompts=True), attn_implementation="flash"),
            "share_prompts needs sdpa or eager",
        ),
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


@pytest.mark.parametrize("layout", [{}, {"packing": True, "share_prompts": True}], ids=["padded", "packed_shared"])
def test_objective_options_reach_grpo_loss(tiny_model_dir: Path, tmp_path: Path, monkeypatch, layout: dict) -> None:
    """Every config option reaches grpo_loss under its TRL name; entropies come from the same forward's logits
    (in the padded and the packed layout)."""
    import openrs_pl.grpo.module as module_mod
    from openrs_pl.grpo.objectives import token_entropy

    calls: list[dict] = []

    def recording_loss(*args, **kwargs):
        calls.append(kwargs)
        return grpo_loss(*args, **kwargs)

    monkeypatch.setattr(module_mod, "grpo_loss", recording_loss)
    options = {
        "loss_type": "cispo", "epsilon_high": 4.0, "importance_sampling_level": "sequence", "delta": 6.0,
        "use_bias_correction_kl": True, "off_policy_mask_threshold": 0.3, "top_entropy_quantile": 0.5,
        "entropy_coef": 0.01, "sapo_temperature_pos": 0.5, "vespo_k_neg": 1.5, "mask_truncated_completions": True,
    }  # fmt: skip
    module = make_module(tiny_model_dir, beta=0.04, **options, **layout)
    rollout = fixed_rollout(module, advantages=[1.0, -1.0])
    input_ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], 1)
    attention = torch.cat([rollout.prompt_mask, rollout.completion_mask], 1)
    with torch.no_grad():  # the pre-step policy's entropies at the completion positions, computed independently
        logits = module.policy(input_ids=input_ids, attention_mask=attention).logits
        logits = logits[:, -rollout.completion_ids.size(1) - 1 : -1]  # position j predicts completion token j
        expected_entropy = token_entropy(logits / module.temperature)
    fit_one_step(module, rollout, tmp_path)
    (kwargs,) = calls
    for name, value in options.items():
        assert kwargs[name] == value, name
    assert kwargs["num_active_tokens"] == rollout.completion_mask.sum().item()  # cispo: global token count
    mask = rollout.completion_mask.bool()
    torch.testing.assert_close(kwargs["entropies"][mask], expected_entropy[mask], atol=1e-5, rtol=1e-5)


def test_adaptive_entropy_controller_steps_with_the_measured_entropy(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    import openrs_pl.grpo.module as module_mod

    calls: list[dict] = []
    monkeypatch.setattr(module_mod, "grpo_loss", lambda *a, **k: calls.append(k) or grpo_loss(*a, **k))
    module = make_module(tiny_model_dir, use_adaptive_entropy=True, entropy_coef=0.1, entropy_target=100.0,
                         entropy_coef_delta=0.05)  # fmt: skip
    assert module.grpo.needs_entropies
    fit_one_step(module, fixed_rollout(module, [1.0, -1.0]), tmp_path)
    ctl = module.entropy_control
    # Token entropies of a 0.57M-parameter model over its vocabulary are ~log(V) < 100 = target: coef goes up.
    assert 0 < ctl.last_entropy < 100 and ctl.coef == pytest.approx(0.15)
    assert calls[0]["entropy_coef"] == 0.0  # no entropy measured before the first step: no bonus yet (as TRL)


def test_sampler_is_correction_weights_the_loss(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """With vllm_importance_sampling_correction, grpo_loss gets sampler_is_weights(old, sampler) in the set mode."""
    import dataclasses

    import openrs_pl.grpo.module as module_mod
    from openrs_pl.grpo.objectives import sampler_is_weights

    calls: list[dict] = []
    monkeypatch.setattr(module_mod, "grpo_loss", lambda *a, **k: calls.append(k) or grpo_loss(*a, **k))
    module = make_module(tiny_model_dir, vllm_importance_sampling_correction=True,
                         vllm_importance_sampling_mode="token_mask", vllm_importance_sampling_clip_min=0.9)  # fmt: skip
    rollout = fixed_rollout(module, [1.0, -1.0])
    with torch.no_grad():
        old = module._logprobs(module.policy, rollout)
    # Every other token the sampler was 0.5 nats more confident: weight exp(-0.5) = 0.61 < clip_min 0.9 -> masked;
    # the others agree: weight exp(0) = 1, kept.
    sampler = old + 0.5 * torch.arange(old.numel()).view_as(old).remainder(2)
    fit_one_step(module, dataclasses.replace(rollout, sampler_logprobs=sampler), tmp_path)
    expected = sampler_is_weights(old, sampler, rollout.completion_mask, "token_mask", 0.9, 3.0)
    mask = rollout.completion_mask.bool()
    torch.testing.assert_close(calls[0]["is_weights"][mask], expected[mask], atol=1e-5, rtol=1e-5)
    assert (expected[mask] == 0).any() and (expected[mask] == 1).any()


@pytest.mark.parametrize(("loss_type", "expected"), [("bnpo", 0.2), ("dapo", 0.1), ("cispo", 0.1)])
def test_entropy_bonus_is_averaged_over_micro_batches(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch, loss_type: str, expected: float
) -> None:
    """Two micro-batches: the step divides bnpo's loss by 2; dapo-style losses are not divided, so their bonus
    coefficient is (0.2 / 2), making the bonus the step's mean entropy for every loss type (TRL 1.16)."""
    import openrs_pl.grpo.module as module_mod

    calls: list[dict] = []
    monkeypatch.setattr(module_mod, "grpo_loss", lambda *a, **k: calls.append(k) or grpo_loss(*a, **k))
    module = make_module(tiny_model_dir, loss_type=loss_type, entropy_coef=0.2, micro_batch_size=1)
    fit_one_step(module, fixed_rollout(module, [1.0, -1.0]), tmp_path)
    assert [k["entropy_coef"] for k in calls] == [pytest.approx(expected)] * 2


def test_adaptive_entropy_state_survives_a_checkpoint(tiny_model_dir: Path) -> None:
    module = make_module(tiny_model_dir, use_adaptive_entropy=True, entropy_coef=0.1, entropy_target=2.0)
    module.entropy_control.update(1.5)  # below target: 0.1 + 0.005, and the bonus is on
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    resumed = make_module(tiny_model_dir, use_adaptive_entropy=True, entropy_coef=0.1, entropy_target=2.0)
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.entropy_control.coef == pytest.approx(0.105) and resumed.entropy_control.last_entropy == 1.5
    assert resumed.entropy_control.applied_coef() == pytest.approx(0.105)


@pytest.mark.parametrize("fused", [True, False])
def test_optimizer_steps_as_torchs_per_parameter_adamw(tiny_model_dir: Path, monkeypatch, fused: bool) -> None:
    """``optim.fused`` picks torch's fused kernel; either way three steps equal a plain per-parameter AdamW's."""
    module = make_module(tiny_model_dir, lr=1e-2)
    module.optim = replace(module.optim, fused=fused, weight_decay=0.1)
    monkeypatch.setattr(module, "_total_optimizer_steps", lambda: 100)
    optimizer = module.configure_optimizers()["optimizer"]
    assert optimizer.defaults["fused"] is fused
    params = [p for p in module.policy.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    expected = [p.detach().clone().requires_grad_() for p in params]
    o = module.optim
    reference = torch.optim.AdamW(
        expected, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay, foreach=False, fused=False
    )
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in zip(params, expected, strict=True):
            p.grad = torch.randn(p.shape, generator=generator)
            q.grad = p.grad.clone()
        optimizer.step()
        reference.step()

    def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        return max((x.detach() - y.detach()).abs().max().item() for x, y in zip(a, b, strict=True))

    assert max_diff(params, start) > 1e-3  # three steps of lr 1e-2 moved every tensor's largest entry
    assert max_diff(params, expected) < 1e-6
