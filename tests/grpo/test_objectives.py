"""Hand-derived values for openrs_pl.grpo.objectives (each expected number is worked out in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from openrs_pl.grpo.config import GRPOConfig
from openrs_pl.grpo.loss import grpo_loss
from openrs_pl.grpo.objectives import (
    AdaptiveEntropy,
    cispo_loss,
    entropy_bonus,
    high_entropy_mask,
    log_importance_weights,
    normalize_luspo,
    off_policy_mask,
    ppo_clip_loss,
    sampler_is_weights,
    sapo_loss,
    token_entropy,
    vespo_weights,
)
from openrs_pl.rollout.advantages import gdpo_advantages


def test_sequence_level_ratio_is_the_masked_mean_log_ratio() -> None:
    # Row 0: log ratios 0.2, -0.4 (third token padded, 5.0 ignored) -> mean -0.1. Row 1: 0.3 alone -> 0.3.
    logp = torch.tensor([[0.2, -0.4, 5.0], [0.3, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    seq = log_importance_weights(logp, torch.zeros(2, 3), mask, "sequence")
    torch.testing.assert_close(seq, torch.tensor([[-0.1], [0.3]]))
    torch.testing.assert_close(log_importance_weights(logp, torch.zeros(2, 3), mask, "token"), logp)
    with pytest.raises(ValueError, match="importance_sampling_level"):
        log_importance_weights(logp, logp, mask, "sentence")  # type: ignore[arg-type]


def test_ppo_clip_two_sided_delta() -> None:
    # A = -1, r = 3: standard clip -> -min(-3, -1.2) = 3 (unbounded in r); delta = 2 caps r: -min(-2, -1.2) = 2.
    # A = +1, r = 3: -min(3, 1.2) = -1.2 either way (delta only bites where the unclipped branch is chosen).
    ratio, adv = torch.tensor([[3.0], [3.0]]), torch.tensor([[-1.0], [1.0]])
    torch.testing.assert_close(ppo_clip_loss(ratio, adv, 0.2, 0.2), torch.tensor([[3.0], [-1.2]]))
    torch.testing.assert_close(ppo_clip_loss(ratio, adv, 0.2, 0.2, delta=2.0), torch.tensor([[2.0], [-1.2]]))


def test_cispo_clips_the_weight_not_the_gradient() -> None:
    # loss = -sg(min(r, 2)) * A * logp. r = 3 -> weight 2: d loss / d logp = -2 * A = -1 for A = 0.5 (a PPO clip
    # would give 0 here); r = 0.5 -> weight 0.5 -> gradient -0.25. No gradient flows through the weight.
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss = cispo_loss(torch.tensor([[3.0, 0.5]]), torch.tensor([[0.5]]), logp, epsilon_high=2.0)
    torch.testing.assert_close(loss, torch.tensor([[1.0, 0.5]]), check_dtype=False)  # -2*0.5*-1, -0.5*0.5*-2
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    torch.testing.assert_close(grad, torch.tensor([[-1.0, -0.25]]))


def test_sapo_gate_values_and_slope() -> None:
    # A = 1 (tau_pos = 1): r = 1 -> -(4/1) sigmoid(0) = -2; d/dr = -4 sigma'(0) = -1 (the plain policy gradient).
    # A = -1 (tau_neg = 2): r = 1.5 -> -(4/2) sigmoid(1) * -1 = 2 * 0.731059 = 1.462117.
    ratio = torch.tensor([[1.0], [1.5]], requires_grad=True)
    loss = sapo_loss(ratio, torch.tensor([[1.0], [-1.0]]), temperature_pos=1.0, temperature_neg=2.0)
    torch.testing.assert_close(loss.detach(), torch.tensor([[-2.0], [2 / (1 + math.exp(-1))]]))
    (grad,) = torch.autograd.grad(loss.sum(), ratio)
    # Row 1: d/dr [2 sigmoid(2 (r - 1))] = 4 sigma(1) (1 - sigma(1)) = 4 * 0.731059 * 0.268941 = 0.786448.
    s = 1 / (1 + math.exp(-1))
    torch.testing.assert_close(grad, torch.tensor([[-1.0], [4 * s * (1 - s)]]))


def test_vespo_gamma_weight_hand_values() -> None:
    # phi(w) = exp(lam + k log w - lam w). Row 0: A >= 0 (k=2, lam=3), log w = 0.1 + 0.2 = 0.3 (padding ignored):
    # phi = exp(3 + 0.6 - 3 e^0.3) = exp(3.6 - 4.049576) = exp(-0.449576) = 0.637894.
    # Row 1: A < 0 (k=3, lam=2), w = 1 -> phi = exp(2 + 0 - 2) = 1.
    log_ratio = torch.tensor([[0.1, 0.2, 9.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    phi = vespo_weights(torch.tensor([[0.5], [-0.5]]), log_ratio, mask)
    torch.testing.assert_close(phi, torch.tensor([[math.exp(3.6 - 3 * math.exp(0.3))], [1.0]]))
    # A sampler ratio of e^-0.3 on row 0 (all tokens, padding included as TRL) brings log w back to 0 -> phi = 1.
    is_ratio = torch.tensor([[math.exp(-0.1), math.exp(-0.2), 1.0], [1.0, 1.0, 1.0]])
    torch.testing.assert_close(
        vespo_weights(torch.tensor([[0.5], [-0.5]]), log_ratio, mask, is_ratio)[0], torch.ones(1)
    )


def test_normalize_luspo_sums_tokens_then_averages_sequences() -> None:
    # Row sums over valid tokens: 1 + 2 = 3 and 4 -> mean 3.5 (the padded 100 never counts).
    per_token = torch.tensor([[1.0, 2.0, 100.0], [4.0, 100.0, 100.0]])
    assert normalize_luspo(per_token, torch.tensor([[1, 1, 0], [1, 0, 0]])).item() == pytest.approx(3.5)


def test_off_policy_mask_keeps_positive_advantages_and_low_drift() -> None:
    # Mean (sampler - logp) over valid tokens: row 0 (1 + 0)/2 = 0.5 > 0.3 with A < 0 -> drop; row 1 same drift
    # but A >= 0 -> keep; row 2 drift 0.1 <= 0.3 -> keep; row 3 drift NaN -> 0 -> keep.
    logp = torch.tensor([[-2.0, -1.0], [-2.0, -1.0], [-1.1, -1.0], [-1.0, -1.0]])
    sampler = torch.tensor([[-1.0, -1.0], [-1.0, -1.0], [-1.0, 50.0], [float("nan"), -1.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    keep = off_policy_mask(torch.tensor([[-1.0], [0.0], [-1.0], [-1.0]]), logp, sampler, mask, threshold=0.3)
    assert keep.flatten().tolist() == [0.0, 1.0, 1.0, 1.0]


def test_token_entropy_and_high_entropy_mask() -> None:
    # Uniform over 2 -> log 2; one-hot-ish [100, 0] -> ~0.
    torch.testing.assert_close(
        token_entropy(torch.tensor([[0.0, 0.0], [100.0, 0.0]])), torch.tensor([math.log(2), 0.0])
    )
    # Valid entropies 1, 2, 3, 4 (the padded 9 excluded): quantile(0.75) = 3.25 -> keep only 4 for rho = 0.25.
    entropies = torch.tensor([[1.0, 2.0, 9.0], [3.0, 4.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    assert high_entropy_mask(entropies, mask, 0.25).tolist() == [[False, False, False], [False, True, False]]
    assert high_entropy_mask(entropies, mask, 1.0).tolist() == mask.bool().tolist()
    assert not high_entropy_mask(entropies, torch.zeros_like(mask), 0.5).any()


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # Token ratios exp(0.5) = 1.6487, exp(-2) = 0.1353, padding exp(0) = 1 (the padded diff is zeroed).
        ("token_truncate", [[1.5, 0.2, 1.0]]),  # clamped to [0.2, 1.5]
        ("token_mask", [[0.0, 0.0, 1.0]]),  # both outside [0.2, 1.5] -> 0
        # Sequence ratio exp(0.5 - 2) = exp(-1.5) = 0.2231: inside [0.2, 1.5].
        ("sequence_truncate", [[math.exp(-1.5)]]),
        ("sequence_mask", [[math.exp(-1.5)]]),
    ],
)
def test_sampler_is_weights_modes(mode: str, expected: list[list[float]]) -> None:
    old = torch.tensor([[0.0, -3.0, 0.0]])
    sampler = torch.tensor([[-0.5, -1.0, 7.0]])
    weights = sampler_is_weights(old, sampler, torch.tensor([[1, 1, 0]]), mode, clip_min=0.2, clip_max=1.5)  # type: ignore[arg-type]
    torch.testing.assert_close(weights, torch.tensor(expected))
    # Sequence masking with a tighter floor drops the whole sequence: 0.2231 < 0.25.
    if mode == "sequence_mask":
        dropped = sampler_is_weights(old, sampler, torch.tensor([[1, 1, 0]]), mode, clip_min=0.25, clip_max=1.5)
        assert dropped.item() == 0.0
    with pytest.raises(ValueError, match="needs clip_min or clip_max"):
        sampler_is_weights(old, sampler, torch.ones(1, 3), "token_truncate", None, None)


def test_entropy_bonus_and_adaptive_controller() -> None:
    assert entropy_bonus(torch.tensor([[1.0, 3.0, 9.0]]), torch.tensor([[1, 1, 0]])).item() == 2.0
    ctl = AdaptiveEntropy(coef=0.02, target=1.0, delta=0.01, coef_min=0.0, coef_max=0.025)
    assert ctl.applied_coef() == 0.0  # no measurement yet: no bonus
    assert ctl.update(0.5) == pytest.approx(0.025)  # 0.02 + 0.01 clamped at coef_max
    assert ctl.applied_coef() == pytest.approx(0.025)  # entropy 0.5 <= target: bonus on
    assert ctl.update(3.0) == pytest.approx(0.015) and ctl.applied_coef() == 0.0  # above target: off, decays
    assert ctl.update(3.0) == pytest.approx(0.005) and ctl.update(3.0) == 0.0  # floored at coef_min


def test_gdpo_normalises_each_reward_then_the_sum() -> None:
    # Two groups of G = 2, two rewards with weights (1, 2).
    # Reward 0: group 0 (1, 0) -> z = +-0.5 / (0.70711 + 1e-4) = +-0.70700; group 1 (1, 1) -> 0, 0.
    # Reward 1: group 0 (0, 0) -> 0, 0; group 1 (10, 0) -> +-5 / (7.07107 + 1e-4) = +-0.70710 (the scale 10 is
    # normalised away). Sums s = (z0, -z0, 2 z1, -2 z1); then (s - mean) / (unbiased std + 1e-4), mean 0.
    per_func = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 10.0], [1.0, 0.0]])
    z0, z1 = 0.5 / (math.sqrt(0.5) + 1e-4), 5 / (math.sqrt(50) + 1e-4)
    s = torch.tensor([z0, -z0, 2 * z1, -2 * z1])
    expected = s / (s.std() + 1e-4)
    torch.testing.assert_close(gdpo_advantages(per_func, torch.tensor([1.0, 2.0]), 2), expected)
    # A None reward (NaN) is left out of its group's statistics and adds 0 to the sum.
    with_nan = per_func.clone()
    with_nan[3, 1] = float("nan")
    assert gdpo_advantages(with_nan, torch.tensor([1.0, 2.0]), 2).isfinite().all()


def test_grpo_loss_entropy_options_need_entropies() -> None:
    logp, mask, adv = torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([1.0, -1.0])
    with pytest.raises(ValueError, match="need the per-token entropies"):
        grpo_loss(logp, None, None, adv, mask, beta=0.0, top_entropy_quantile=0.5)
    with pytest.raises(ValueError, match="need the per-token entropies"):
        grpo_loss(logp, None, None, adv, mask, beta=0.0, entropy_coef=0.1)


def test_grpo_loss_luspo_on_policy_hand_value() -> None:
    # On-policy, sequence ratio 1: loss = -(1/N) sum_i A_i |y_i| = -(1 * 2 + (-1) * 1) / 2 = -0.5.
    logp = torch.tensor([[-1.0, -2.0], [-0.5, 3.0]], requires_grad=True)
    out = grpo_loss(logp, None, None, torch.tensor([1.0, -1.0]), torch.tensor([[1, 1], [1, 0]]), beta=0.0,
                    loss_type="luspo", importance_sampling_level="sequence")  # fmt: skip
    assert out.loss.item() == pytest.approx(-0.5)
    # d loss / d logp_it = -A_i * (|y_i| * 1/|y_i|) / N = -A_i / 2 on valid tokens, 0 on padding.
    (grad,) = torch.autograd.grad(out.loss, logp)
    torch.testing.assert_close(grad, torch.tensor([[-0.5, -0.5], [0.5, 0.0]]))


def test_config_validates_objective_options_and_builds_controller() -> None:
    with pytest.raises(ValueError, match="delta"):
        GRPOConfig(delta=1.1)
    with pytest.raises(ValueError, match="top_entropy_quantile"):
        GRPOConfig(top_entropy_quantile=1.5)
    with pytest.raises(ValueError, match="clip_min"):
        GRPOConfig(vllm_importance_sampling_clip_min=3.0, vllm_importance_sampling_clip_max=2.0)
    with pytest.raises(ValueError, match="truncate"):
        GRPOConfig(vllm_importance_sampling_mode="token_truncate", vllm_importance_sampling_clip_max=None)
    assert GRPOConfig().adaptive_entropy() is None and not GRPOConfig().needs_entropies
    ctl = GRPOConfig(use_adaptive_entropy=True, entropy_coef=0.3, entropy_target=1.5).adaptive_entropy()
    assert ctl is not None and (ctl.coef, ctl.target) == (0.3, 1.5)
    assert GRPOConfig(top_entropy_quantile=0.2).needs_entropies


@pytest.mark.parametrize("name", ["openrs_exp1.yaml", "openrs_exp2.yaml", "openrs_exp3.yaml"])
def test_recipe_configs_keep_every_newer_option_off(name: str) -> None:
    """The Open-RS configs stay exact: bnpo, no bias-corrected KL, no IS correction, no dynamic sampling, no
    entropy terms, no overlong reward (TRL 1.16's own defaults differ for two of these)."""
    from pathlib import Path

    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / name).read_text())
    grpo = GRPOConfig(**config["model"].get("grpo", {}))
    assert grpo.loss_type == "bnpo" and grpo.importance_sampling_level == "token" and grpo.delta is None
    assert not grpo.use_bias_correction_kl and not grpo.vllm_importance_sampling_correction
    assert grpo.off_policy_mask_threshold is None and not grpo.needs_entropies
    rollout = config.get("rollout", {})
    assert not rollout.get("dynamic_sampling", False)
    assert rollout.get("multi_objective_aggregation", "sum_then_normalize") == "sum_then_normalize"
    assert "overlong" not in {r["name"] for r in rollout["rewards"]}
