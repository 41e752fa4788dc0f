"""The wiring between a rollout and the loss: real optimizer steps of GRPOModule against an independent computation.

Each test runs ``trainer.fit`` on a hand-made rollout with ``num_iterations = 2`` (so the second pass has ratios
away from 1 and the clip ranges matter), captures the policy's weights and gradient just before each optimizer
step, and compares them (and the logged loss/KL) with ``grpo_loss`` called directly on log-probs computed here from
separately loaded models: old log-probs from the weights before the first step, reference log-probs from the
untouched checkpoint. So a module that forgets to pass a setting to the loss, scores the reference with the
policy, drops the accumulation scale or skips the old log-probs fails here, not only in production.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM

from openrs_pl.grpo.config import GRPOConfig, OptimConfig
from openrs_pl.grpo.logprobs import completion_logprobs
from openrs_pl.grpo.loss import grpo_loss, logprob_gap
from openrs_pl.grpo.module import GRPOModule
from openrs_pl.rollout.assemble import assemble_rollout
from openrs_pl.rollout.types import GenerationOutput, PromptBatch, RolloutBatch

TEMPERATURE = 0.7
MAX_COMPLETION_LENGTH = 16  # the config value; the rollout's padded completion length is 5


class InjectAndCapture(L.Callback):
    """Hands the module a fixed rollout and records the gradient and metrics of every optimizer step."""

    def __init__(self, rollout: RolloutBatch) -> None:
        self.rollout = rollout
        self.grads: list[dict[str, Tensor]] = []
        self.weights: list[dict[str, Tensor]] = []  # the weights each pass's forward used

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        batch.rollout = self.rollout

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads.append({n: p.grad.detach().clone() for n, p in pl_module.policy.named_parameters()})
        self.weights.append({k: v.detach().clone() for k, v in pl_module.policy.state_dict().items()})


def perturb(model: nn.Module, seed: int = 0, scale: float = 0.05) -> nn.Module:
    """Move a model away from the checkpoint, the same way every time (the policy after some training)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


def make_rollout(pad_token_id: int, eos: int) -> RolloutBatch:
    """2 prompts x G=2 completions of different lengths; the third hit the length limit; sampler log-probs given."""
    prompts = [[11, 12, 13], [21, 22]]
    completions = [[31, 32, eos], [33, 34, 35, 36, eos], [37, 38, 39, 40, 41], [42, eos]]
    gen = torch.Generator().manual_seed(1)
    sampler = [(-2.0 - torch.rand(len(c), generator=gen)).tolist() for c in completions]
    output = GenerationOutput(completion_ids=completions, finished=[True, True, False, True], logprobs=sampler)
    rewards = torch.tensor([1.0, 0.0, 0.5, 2.0])
    advantages = torch.tensor([0.9, -0.6, -1.2, 0.7])
    return assemble_rollout(prompts, output, rewards, rewards[:, None], advantages, 2, pad_token_id)


def make_module(model_dir: Path, micro_batch_size: int = 2, lr: float = 1e-2, **grpo: object) -> GRPOModule:
    module = GRPOModule(
        name_or_path=str(model_dir),
        grpo=GRPOConfig(micro_batch_size=micro_batch_size, **grpo),  # type: ignore[arg-type]
        optim=OptimConfig(lr=lr, warmup_ratio=0.0, min_lr_rate=1.0, max_grad_norm=None),
        temperature=TEMPERATURE,
        max_completion_length=MAX_COMPLETION_LENGTH,
        torch_dtype="float32",
    )
    module.load_models()
    perturb(module.policy)
    return module


def fit_one_step(module: GRPOModule, rollout: RolloutBatch, tmp_path: Path) -> InjectAndCapture:
    capture = InjectAndCapture(rollout)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        callbacks=[capture], default_root_dir=tmp_path, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader([PromptBatch([[1]])], batch_size=None))
    module.trainer_metrics = dict(trainer.callback_metrics)  # type: ignore[assignment]
    return capture


def logprobs(model: nn.Module, rollout: RolloutBatch) -> Tensor:  # [N, L]
    ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], dim=1)
    mask = torch.cat([rollout.prompt_mask, rollout.completion_mask], dim=1)
    return completion_logprobs(model, ids, mask, rollout.completion_ids.shape[1], temperature=TEMPERATURE)


def load(model_dir: Path, weights: dict[str, Tensor] | None = None) -> nn.Module:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if weights is not None:
        model.load_state_dict(weights)
    return model


def expected_pass(
    model_dir: Path, weights: dict[str, Tensor], old_weights: dict[str, Tensor], rollout: RolloutBatch, **cfg: object
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Gradient, loss and KL of one optimizer pass (micro-batches of 2), computed from scratch with ``grpo_loss``."""
    policy = load(model_dir, weights)
    beta = float(cfg.get("beta", 0.04))  # type: ignore[arg-type]
    loss_type = cfg.get("loss_type", "bnpo")
    mask_truncated = bool(cfg.get("mask_truncated_completions", False))
    # token_truncate: per-token weight min(exp(old - sampler), clip_max), what `tis_cap` used to be.
    tis_cap = cfg.get("vllm_importance_sampling_clip_max") if cfg.get("vllm_importance_sampling_correction") else None
    with torch.no_grad():
        ref = logprobs(load(model_dir).eval(), rollout) if beta > 0 else None  # the frozen checkpoint
        old = logprobs(load(model_dir, old_weights), rollout)  # the policy before this generation batch's steps
    valid = rollout.completion_mask.bool() & ~(rollout.truncated[:, None] & mask_truncated)
    micro_batch_size = 2
    n_micro = rollout.num_completions // micro_batch_size
    losses, kls = [], []
    for start in range(0, rollout.num_completions, micro_batch_size):
        rows = slice(start, start + micro_batch_size)
        mb = rollout.select(rows)
        weights_is = None
        if tis_cap is not None:
            weights_is = torch.clamp(torch.exp(old[rows] - mb.sampler_logprobs), max=float(tis_cap))  # type: ignore[arg-type,operator]
        elif mb.staleness is not None:  # overlapped rollouts: truncated IS on the rows sampled by older weights
            cap = float(cfg.get("vllm_importance_sampling_clip_max", 3.0))  # type: ignore[arg-type]
            truncated_is = torch.clamp(torch.exp(old[rows] - mb.sampler_logprobs), max=cap)  # type: ignore[operator]
            weights_is = torch.where(mb.staleness[:, None] > 0, truncated_is, torch.ones_like(truncated_is))
        out = grpo_loss(
            logprobs(policy, mb),
            old[rows],
            ref[rows] if ref is not None else None,
            mb.advantages,
            mb.completion_mask,
            loss_type=loss_type,  # type: ignore[arg-type]
            beta=beta,
            epsilon=float(cfg.get("epsilon", 0.2)),  # type: ignore[arg-type]
            epsilon_high=cfg.get("epsilon_high"),  # type: ignore[arg-type]
            max_completion_length=MAX_COMPLETION_LENGTH,
            num_active_tokens=float(valid.sum()),
            truncated=mb.truncated,
            mask_truncated_completions=mask_truncated,
            is_weights=weights_is,
        )
        scale = 1.0 if loss_type == "dapo" else 1.0 / n_micro
        (out.loss * scale).backward()
        losses.append(out.loss.detach())
        kls.append(out.kl)
    grads = {n: p.grad for n, p in policy.named_parameters()}
    return grads, torch.stack(losses).mean(), torch.stack(kls).mean()


CASES = {
    "bnpo": {"loss_type": "bnpo"},
    "grpo": {"loss_type": "grpo"},
    "dr_grpo": {"loss_type": "dr_grpo"},
    "dapo": {"loss_type": "dapo"},
    "epsilon_high": {"loss_type": "bnpo", "epsilon": 0.1, "epsilon_high": 0.3},
    "mask_truncated": {"loss_type": "bnpo", "mask_truncated_completions": True},
    "is_token_truncate": {
        "loss_type": "bnpo",
        "vllm_importance_sampling_correction": True,
        "vllm_importance_sampling_mode": "token_truncate",
        "vllm_importance_sampling_clip_max": 1.5,
    },
    "beta": {"loss_type": "grpo", "beta": 0.3},
    "beta0": {"loss_type": "grpo", "beta": 0.0},
    # Reference, old and policy passes padding-free (12 tokens: several rows per pass), then with shared prompts.
    "packed": {"loss_type": "bnpo", "packing": True, "pack_tokens": 12},
    "packed_shared": {"loss_type": "dapo", "packing": True, "pack_tokens": 12, "share_prompts": True},
}


@pytest.mark.parametrize("case", list(CASES))
def test_step_gradients_equal_direct_grpo_loss(tiny_model_dir: Path, tmp_path: Path, case: str) -> None:
    cfg = CASES[case]
    module = make_module(tiny_model_dir, num_iterations=2, **cfg)
    rollout = make_rollout(module.pad_token_id, module.tokenizer.eos_token_id)
    captured = fit_one_step(module, rollout, tmp_path)
    assert len(captured.grads) == 2, "num_iterations=2: two optimizer steps on one generation batch"
    initial = captured.weights[0]
    # The expected pass is padded: a packed layout sums in another order (float32 rounding, ~1e-6 of the max).
    atol = 1e-5 if cfg.get("packing") else 1e-7
    for step in range(2):
        grads, loss, kl = expected_pass(tiny_model_dir, captured.weights[step], initial, rollout, **cfg)
        for name, got in captured.grads[step].items():
            torch.testing.assert_close(got, grads[name], rtol=1e-4, atol=atol, msg=f"pass {step} {name}")
    metrics = module.trainer_metrics  # type: ignore[attr-defined]
    # Logged values are those of the last pass.
    torch.testing.assert_close(metrics["train/loss"], loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(metrics["train/kl"], kl, rtol=1e-5, atol=1e-8)
    if cfg.get("beta", 0.04) > 0:  # type: ignore[operator]
        # The policy was moved away from the base model, so the KL to the frozen reference is positive.
        assert metrics["train/kl"] > 1e-4
    # The second pass's ratios left the clip range somewhere, so the clip settings were exercised.
    assert metrics["train/clip_ratio"] > 0


@pytest.mark.parametrize("num_iterations", [1, 2])
def test_stale_rows_get_truncated_importance_weights(tiny_model_dir: Path, tmp_path: Path, num_iterations: int) -> None:
    """Overlapped rollouts, sampler correction off: the group sampled by older weights (staleness 1) is weighted by
    min(exp(old - sampler), clip_max) per token, the fresh group is not. With one iteration the old log-probs come
    from the training pass itself (no extra forward), with two from the separate pre-update pass."""
    cfg = {"loss_type": "bnpo", "vllm_importance_sampling_clip_max": 1.5}
    module = make_module(tiny_model_dir, num_iterations=num_iterations, **cfg)
    plain = make_rollout(module.pad_token_id, module.tokenizer.eos_token_id)
    rollout = replace(plain, staleness=torch.tensor([1, 1, 0, 0]))
    passes = []
    original = module._logprobs
    module._logprobs = lambda *a, **k: passes.append(1) or original(*a, **k)  # type: ignore[method-assign]
    captured = fit_one_step(module, rollout, tmp_path)
    # Reference + policy pass per micro-batch (2 of 2 rows) per iteration, + the old pass only with two iterations.
    assert len(passes) == 1 + 2 * num_iterations + (num_iterations > 1)
    initial = captured.weights[0]
    for step in range(num_iterations):
        grads, _, _ = expected_pass(tiny_model_dir, captured.weights[step], initial, rollout, **cfg)
        unweighted, _, _ = expected_pass(tiny_model_dir, captured.weights[step], initial, plain, **cfg)
        for name, got in captured.grads[step].items():
            torch.testing.assert_close(got, grads[name], rtol=1e-4, atol=1e-7, msg=f"pass {step} {name}")
        assert any(not torch.allclose(grads[n], unweighted[n], rtol=1e-3, atol=1e-6) for n in grads), "weights matter"


def test_accumulated_micro_batches_equal_one_full_batch(tiny_model_dir: Path, tmp_path: Path) -> None:
    """grpo's per-sequence mean: 2 micro-batches of 2 give exactly the gradient of one batch of 4."""
    grads = {}
    for size in (2, 4):
        module = make_module(tiny_model_dir, micro_batch_size=size, lr=1e-3, loss_type="grpo")
        rollout = make_rollout(module.pad_token_id, module.tokenizer.eos_token_id)
        grads[size] = fit_one_step(module, rollout, tmp_path / str(size)).grads[0]
    for name, full in grads[4].items():
        torch.testing.assert_close(grads[2][name], full, rtol=1e-4, atol=1e-7, msg=name)


def test_second_iteration_uses_the_old_logprobs(tiny_model_dir: Path, tmp_path: Path) -> None:
    """num_iterations=2: the second pass's ratio is against the pre-update policy, so a big step gets clipped."""
    module = make_module(tiny_model_dir, micro_batch_size=4, lr=5e-2, loss_type="bnpo", num_iterations=2, epsilon=0.01)
    # No sampler log-probs: the old log-probs are computed only because num_iterations > 1.
    rollout = replace(make_rollout(module.pad_token_id, module.tokenizer.eos_token_id), sampler_logprobs=None)
    captured = fit_one_step(module, rollout, tmp_path)
    assert len(captured.grads) == 2, "two optimizer steps on one generation batch"
    assert module.trainer_metrics["train/clip_ratio"] > 0  # type: ignore[attr-defined]


def test_one_pass_takes_the_old_logprobs_from_the_training_forward(tiny_model_dir: Path, tmp_path: Path) -> None:
    """num_iterations=1 with sampler log-probs: the IS weights and the sampler-gap metric use the training forward's
    detached log-probs (equal to the pre-update policy's), and the policy runs no forward beyond the training one."""
    cfg = CASES["is_token_truncate"]
    module = make_module(tiny_model_dir, **cfg)
    rollout = make_rollout(module.pad_token_id, module.tokenizer.eos_token_id)
    forwards: list[int] = []
    module.policy.register_forward_hook(lambda _m, _i, out: forwards.append(out.logits.shape[0]))
    captured = fit_one_step(module, rollout, tmp_path)
    # 2 micro-batches of 2 rows, logprob_chunk_size 2: one forward each; an extra "old" pass would add 2 more.
    assert forwards == [2, 2]
    weights = captured.weights[0]
    grads, loss, _ = expected_pass(tiny_model_dir, weights, weights, rollout, **cfg)
    for name, got in captured.grads[0].items():
        torch.testing.assert_close(got, grads[name], rtol=1e-4, atol=1e-7, msg=name)
    metrics = module.trainer_metrics  # type: ignore[attr-defined]
    torch.testing.assert_close(metrics["train/loss"], loss, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        old = logprobs(load(tiny_model_dir, weights), rollout)
    assert rollout.sampler_logprobs is not None
    gap = logprob_gap(rollout.sampler_logprobs, old, rollout.completion_mask)
    assert gap > 0.1  # the sampler disagrees, so IS weights differ from 1 and the metric is not trivially 0
    torch.testing.assert_close(metrics["train/sampler_logprob_diff"], gap, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("share", [False, True])
def test_packing_reaches_every_log_prob_pass(tiny_model_dir: Path, tmp_path: Path, share: bool) -> None:
    """With grpo.packing the reference, old and policy passes all see packed rows (one sequence run per row, no
    pad token), with an explicit mask exactly when prompts are shared; the values are checked in CASES above."""
    module = make_module(tiny_model_dir, num_iterations=2, packing=True, pack_tokens=64, share_prompts=share)
    rollout = make_rollout(module.pad_token_id, module.tokenizer.eos_token_id)
    real_tokens = int(rollout.prompt_mask.sum() + rollout.completion_mask.sum())
    shared_prompt_tokens = 3 + 2  # the two prompts, once per group of G = 2
    seen: dict[str, list[tuple[int, int, bool]]] = {"policy": [], "reference": []}
    for name, model in (("policy", module.policy), ("reference", module.reference)):
        model.register_forward_pre_hook(  # type: ignore[union-attr]
            lambda _m, _a, kw, name=name: seen[name].append(
                (*kw["input_ids"].shape, kw["attention_mask"] is not None and kw["attention_mask"].dim() == 4)
            ),
            with_kwargs=True,
        )
    fit_one_step(module, rollout, tmp_path)
    tokens = shared_prompt_tokens + int(rollout.completion_mask.sum()) if share else real_tokens
    assert seen["reference"] == [(1, tokens, share)]  # the whole rollout in one row
    # old log-probs: the whole rollout in one row; then 2 passes x 2 micro-batches of one group each.
    assert [rows for rows, _, _ in seen["policy"]] == [1] * 5
    assert all(mask == share for _, _, mask in seen["policy"])
    assert seen["policy"][0][1] == tokens and sum(t for _, t, _ in seen["policy"][1:3]) == tokens
