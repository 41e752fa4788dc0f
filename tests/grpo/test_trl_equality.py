"""``grpo_loss`` equals TRL 1.16's ``GRPOTrainer._compute_loss`` on identical crafted inputs, loss and gradient.

TRL's method is called unbound on a minimal stand-in for the trainer (the attributes it reads, a one-process
accelerator, and a log-prob function that returns our tensors), so no model, dataset or Trainer is built. The
inputs are built so that every branch matters: log-probs far from the old ones (ratios outside every clip range),
right-padded rows of uneven length, a truncated row, positive, negative and zero advantages, and a reference
that differs from the policy. One micro-batch per step (TRL's gradient-accumulation divisor is 1), float64.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from typing import Any

import pytest
import torch
from torch import Tensor
from trl.trainer.grpo_trainer import GRPOTrainer  # the test stack installs trl==1.16.0 (the bench extra)

from openrs_pl.grpo.config import GRPOConfig
from openrs_pl.grpo.loss import grpo_loss
from openrs_pl.grpo.objectives import AdaptiveEntropy

LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"]
LEVELS = ["token", "sequence"]
TOL = 1e-6


class _OneProcess:
    """The accelerate calls ``_compute_loss`` makes, for a single process."""

    num_processes = 1
    sync_gradients = True

    def reduce(self, tensor: Tensor, reduction: str = "sum") -> Tensor:
        return tensor

    def gather(self, tensor: Tensor) -> Tensor:
        return tensor

    def pad_across_processes(self, tensor: Tensor, dim: int = 0, pad_index: float = 0) -> Tensor:
        return tensor


class _TRLStub:
    """Just what ``GRPOTrainer._compute_loss`` reads from ``self``."""

    _compute_loss = GRPOTrainer._compute_loss
    get_high_entropy_mask = GRPOTrainer.get_high_entropy_mask
    get_off_policy_mask = staticmethod(GRPOTrainer.get_off_policy_mask)
    get_gamma_weights = staticmethod(GRPOTrainer.get_gamma_weights)

    def __init__(self, logprobs: Tensor, entropies: Tensor, options: dict[str, Any], max_completion_length: int):
        self._logprobs, self._entropies = logprobs, entropies
        o = options
        self.loss_type = o["loss_type"]
        self.beta = o["beta"]
        self.epsilon_low = o["epsilon"]
        self.epsilon_high = o["epsilon_high"]
        self.importance_sampling_level = o["importance_sampling_level"]
        self.off_policy_mask_threshold = o["off_policy_mask_threshold"]
        self.top_entropy_quantile = o["top_entropy_quantile"]
        self.use_vllm = self.vllm_importance_sampling_correction = o["is_weights"] is not None
        self.entropy_coef = o["entropy_coef"]
        self.use_adaptive_entropy = o["use_adaptive_entropy"]
        self._entropy_bonus_enabled = self.entropy_coef != 0.0 or self.use_adaptive_entropy
        self._last_world_entropy = o["last_entropy"]
        self._entropy_window_stats = None
        self.max_completion_length = max_completion_length
        self.current_gradient_accumulation_steps = 1
        self.aux_loss_enabled = False
        self.accelerator = _OneProcess()
        self.model = torch.nn.Module().train()
        self._metrics: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        names = ("delta", "use_bias_correction_kl", "sapo_temperature_pos", "sapo_temperature_neg", "vespo_k_pos",
                 "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg", "entropy_target", "entropy_coef_delta",
                 "entropy_coef_min", "entropy_coef_max")  # fmt: skip
        self.args = type("Args", (), {"steps_per_generation": 1, **{n: o[n] for n in names}})()

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor, None]:
        return self._logprobs, self._entropies, None


def _inputs(seed: int = 0) -> dict[str, Tensor]:
    """6 completions (2 prompts x G=3), length 7: uneven masks, one truncated row, ratios far from 1."""
    g = torch.Generator().manual_seed(seed)
    n, length = 6, 7
    lengths = torch.tensor([7, 3, 5, 1, 7, 4])
    mask = (torch.arange(length) < lengths.unsqueeze(1)).long()  # [N, L]
    truncated = torch.tensor([True, False, False, False, False, False])  # row 0 hit the limit
    old = -torch.rand(n, length, generator=g, dtype=torch.float64) * 3 - 0.2  # log-probs in [-3.2, -0.2]
    logprobs = old + torch.randn(n, length, generator=g, dtype=torch.float64) * 0.6  # ratios e^(+-0.6) and beyond
    ref = old + torch.randn(n, length, generator=g, dtype=torch.float64) * 0.4
    sampler = old + torch.randn(n, length, generator=g, dtype=torch.float64) * 0.5
    return {
        "logprobs": logprobs,
        "old": old,
        "ref": ref,
        "sampler": sampler,
        "mask": mask,
        "truncated": truncated,
        "adv": torch.tensor([1.2, -0.7, 0.0, -1.5, 0.9, 0.3], dtype=torch.float64),
        "entropies": torch.rand(n, length, generator=g, dtype=torch.float64) * 4,
        "is_weights": torch.exp((old - sampler) * mask).clamp(max=1.5),  # token_truncate, 1 on padding as TRL
    }


def _options(**overrides: Any) -> dict[str, Any]:
    base = {
        "loss_type": "bnpo", "beta": 0.04, "epsilon": 0.2, "epsilon_high": 0.28,
        "importance_sampling_level": "token", "use_bias_correction_kl": False, "delta": None,
        "off_policy_mask_threshold": None, "top_entropy_quantile": 1.0, "entropy_coef": 0.0,
        "use_adaptive_entropy": False, "last_entropy": math.inf, "entropy_target": 0.2, "entropy_coef_delta": 0.005,
        "entropy_coef_min": 0.0, "entropy_coef_max": 1.0, "sapo_temperature_pos": 1.0, "sapo_temperature_neg": 1.05,
        "vespo_k_pos": 2.0, "vespo_lambda_pos": 3.0, "vespo_k_neg": 3.0, "vespo_lambda_neg": 2.0, "is_weights": None,
    }  # fmt: skip
    base |= overrides
    if base["loss_type"] == "cispo" and "epsilon_high" not in overrides:
        base["epsilon_high"] = 1.3  # CISPO's cap is on the ratio itself; 1.3 is active on these inputs
    return base


def _trl(x: dict[str, Tensor], o: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, _TRLStub]:
    logprobs = x["logprobs"].clone().requires_grad_(True)
    entropies = x["entropies"].clone().requires_grad_(True)
    mask = x["mask"] * (~x["truncated"]).long().unsqueeze(1)  # TRL masks truncated rows in the completion mask
    n, length = mask.shape
    inputs = {
        "prompt_ids": torch.zeros(n, 1, dtype=torch.long),
        "prompt_mask": torch.ones(n, 1, dtype=torch.long),
        "completion_ids": torch.zeros(n, length, dtype=torch.long),
        "completion_mask": mask,
        "advantages": x["adv"],
        "old_per_token_logps": x["old"],
        "ref_per_token_logps": x["ref"],
        "sampling_per_token_logps": x["sampler"],
        "num_items_in_batch": mask.sum().to(torch.float64),
    }
    if o["is_weights"] is not None:
        inputs["importance_sampling_ratio"] = o["is_weights"]
    stub = _TRLStub(logprobs, entropies, o, max_completion_length=length)
    loss = stub._compute_loss(None, inputs)
    grad_logprobs, grad_entropies = torch.autograd.grad(loss, (logprobs, entropies), allow_unused=True)
    if grad_entropies is None:
        grad_entropies = torch.zeros_like(entropies)
    return loss.detach(), grad_logprobs, grad_entropies, stub


def _ours(x: dict[str, Tensor], o: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, Any]:
    logprobs = x["logprobs"].clone().requires_grad_(True)
    entropies = x["entropies"].clone().requires_grad_(True)
    mask = x["mask"] * (~x["truncated"]).long().unsqueeze(1)
    entropy_coef = o["entropy_coef"]
    if o["use_adaptive_entropy"]:
        entropy_coef = AdaptiveEntropy(o["entropy_coef"], o["entropy_target"], last_entropy=o["last_entropy"])
        entropy_coef = entropy_coef.applied_coef()
    out = grpo_loss(
        logprobs,
        x["old"],
        x["ref"],
        x["adv"],
        x["mask"],
        truncated=x["truncated"],
        mask_truncated_completions=True,
        max_completion_length=x["mask"].size(1),
        num_active_tokens=mask.sum().item(),
        sampler_logprobs=x["sampler"],
        entropies=entropies,
        entropy_coef=entropy_coef,
        **{k: v for k, v in o.items() if k not in ("use_adaptive_entropy", "last_entropy", "entropy_coef")
           and not k.startswith("entropy_")},
    )  # fmt: skip
    grad_logprobs, grad_entropies = torch.autograd.grad(out.loss, (logprobs, entropies), allow_unused=True)
    if grad_entropies is None:
        grad_entropies = torch.zeros_like(entropies)
    return out.loss.detach(), grad_logprobs, grad_entropies, out


def _assert_equal(o: dict[str, Any], seed: int = 0) -> float:
    x = _inputs(seed)
    trl_loss, trl_grad, trl_grad_h, _ = _trl(x, o)
    loss, grad, grad_h, _ = _ours(x, o)
    diff = max(
        (loss - trl_loss).abs().item(), (grad - trl_grad).abs().max().item(), (grad_h - trl_grad_h).abs().max().item()
    )
    assert diff <= TOL, f"{o['loss_type']}: max |ours - TRL| = {diff:.2e} (loss {loss.item()} vs {trl_loss.item()})"
    assert grad.abs().sum() > 0  # a real gradient was compared
    return diff


@pytest.mark.parametrize(("loss_type", "level", "bias_kl"), list(itertools.product(LOSS_TYPES, LEVELS, [False, True])))
def test_loss_and_gradient_equal_trl(loss_type: str, level: str, bias_kl: bool) -> None:
    """Every loss type x importance level x KL bias correction (beta = 0.04), loss and d loss / d logp."""
    _assert_equal(_options(loss_type=loss_type, importance_sampling_level=level, use_bias_correction_kl=bias_kl))


OPTION_CASES = {
    "two_sided_delta": {"delta": 1.5},
    "off_policy_mask": {"off_policy_mask_threshold": 0.1},
    "top_entropy_quantile": {"top_entropy_quantile": 0.3},
    "entropy_bonus": {"entropy_coef": 0.05},
    "entropy_bonus_on_top_quantile": {"entropy_coef": 0.05, "top_entropy_quantile": 0.5},
    "adaptive_entropy_applied": {"use_adaptive_entropy": True, "entropy_coef": 0.1, "last_entropy": 0.1},
    "adaptive_entropy_gated_off": {"use_adaptive_entropy": True, "entropy_coef": 0.1, "last_entropy": 5.0},
    "sampler_is_weights": {"is_weights": "from_inputs"},
    "sapo_temperatures": {"sapo_temperature_pos": 0.7, "sapo_temperature_neg": 2.0},
    "vespo_parameters": {"vespo_k_pos": 1.5, "vespo_lambda_pos": 2.0, "vespo_k_neg": 2.5, "vespo_lambda_neg": 1.0},
    "no_kl": {"beta": 0.0},
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_options_equal_trl(case: str, loss_type: str) -> None:
    """Each further TRL option, on every loss type, with the token-level ratio and the bias-corrected KL."""
    overrides = dict(OPTION_CASES[case])
    if overrides.get("is_weights") == "from_inputs":
        overrides["is_weights"] = _inputs()["is_weights"]
    _assert_equal(_options(loss_type=loss_type, use_bias_correction_kl=True, **overrides), seed=1)


def test_adaptive_entropy_update_equals_trl() -> None:
    """After the step, TRL's coefficient and ours moved the same way from the same measured entropy."""
    for last, coef in ((0.1, 0.1), (5.0, 0.1), (0.1, 0.999)):
        o = _options(use_adaptive_entropy=True, entropy_coef=coef, last_entropy=last, entropy_target=2.5,
                     entropy_coef_delta=0.01)  # fmt: skip
        x = _inputs(2)
        *_, stub = _trl(x, o)
        *_, out = _ours(x, o)
        ours = AdaptiveEntropy(coef, target=2.5, delta=0.01, last_entropy=last)
        assert ours.update(out.entropy.item()) == pytest.approx(stub.entropy_coef, abs=1e-12)
        assert ours.last_entropy == pytest.approx(stub._last_world_entropy, abs=1e-12)


def test_config_loss_options_are_grpo_loss_keywords_with_trl_defaults() -> None:
    """The config's options reach grpo_loss under TRL's names, with TRL 1.16's defaults where the recipe had none."""
    from trl import GRPOConfig as TRLConfig

    ours, trl = GRPOConfig(), TRLConfig(output_dir="unused", report_to="none", use_cpu=True, bf16=False)
    for name in ("importance_sampling_level", "delta", "off_policy_mask_threshold", "top_entropy_quantile",
                 "sapo_temperature_pos", "sapo_temperature_neg", "vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg",
                 "vespo_lambda_neg", "entropy_coef", "use_adaptive_entropy", "entropy_coef_min", "entropy_coef_max",
                 "entropy_coef_delta", "entropy_target", "vllm_importance_sampling_mode",
                 "vllm_importance_sampling_clip_min", "vllm_importance_sampling_clip_max"):  # fmt: skip
        assert getattr(ours, name) == getattr(trl, name), name
    import inspect

    from openrs_pl.rollout.callback import RolloutCallback

    rollout_default = inspect.signature(RolloutCallback).parameters["multi_objective_aggregation"].default
    assert rollout_default == trl.multi_objective_aggregation  # the advantage side lives on the rollout callback
    # Recipe-exact where TRL 1.16 changed its default: no bias-corrected KL, no vLLM IS correction.
    assert ours.use_bias_correction_kl is False and trl.use_bias_correction_kl is True
    assert ours.vllm_importance_sampling_correction is False
    x = _inputs()
    out = grpo_loss(
        x["logprobs"], x["old"], x["ref"], x["adv"], x["mask"], **GRPOConfig(loss_type="sapo").loss_options()
    )
    assert out.loss.isfinite()


def test_advantages_equal_trl_formulas() -> None:
    """Both multi_objective_aggregation modes against TRL 1.16's expressions (written out from
    ``_generate_and_score_completions``, with TRL's own ``nanstd``), including a None (NaN) reward."""
    from trl.trainer.utils import nanstd

    from openrs_pl.rollout.advantages import gdpo_advantages, group_advantages

    g, weights = 3, torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    per_func = torch.rand(12, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 4
    per_func[5, 1] = float("nan")
    # normalize_then_sum (GDPO)
    grouped = per_func.view(-1, g, 3)
    reward_k = (grouped - torch.nanmean(grouped, dim=1, keepdim=True)) / (nanstd(grouped, dim=1, keepdim=True) + 1e-4)
    rewards = (reward_k.view(-1, 3) * weights.unsqueeze(0)).nansum(dim=1)
    trl_gdpo = (rewards - torch.nanmean(rewards)) / (nanstd(rewards).expand_as(rewards) + 1e-4)
    assert (gdpo_advantages(per_func, weights, g) - trl_gdpo).abs().max() <= TOL
    # sum_then_normalize with scale_rewards="group" (the recipe)
    total = (per_func * weights).nansum(dim=1)
    mean = torch.nanmean(total.view(-1, g), dim=1).repeat_interleave(g)
    std = nanstd(total.view(-1, g), dim=1).repeat_interleave(g)
    assert (group_advantages(total, g, "group") - (total - mean) / (std + 1e-4)).abs().max() <= TOL
