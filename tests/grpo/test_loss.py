"""Tests for openrs_pl.grpo.loss: slow loop references, hand-derived values, float64 gradchecks, edge cases."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from torch import Tensor, nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from openrs_pl.grpo.logprobs import completion_logprobs, selective_log_softmax
from openrs_pl.grpo.loss import (
    clipped_surrogate,
    grpo_loss,
    k3_kl,
    logprob_gap,
    masked_mean,
    normalize_bnpo,
    normalize_dapo,
    normalize_dr_grpo,
    normalize_grpo,
)
from openrs_pl.grpo.objectives import sampler_is_weights
from openrs_pl.rollout.advantages import group_advantages

E = math.e
LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo"]


def _stack(out: tuple[Tensor | None, ...]) -> Tensor:
    """The fields of a LossOutput that are set, stacked (for one assert_close over all of them)."""
    return torch.stack([v for v in out if v is not None])


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_mask(n: int, length: int, seed: int = 0) -> Tensor:
    """Right-padded completion mask with lengths 1..length (at least one row full, one with a single token)."""
    lengths = torch.randint(1, length + 1, (n,), generator=_generator(seed))
    lengths[0], lengths[-1] = length, 1
    return torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)  # [N, L]


# ---------------------------------------------------------------- selective_log_softmax


def test_selective_log_softmax_matches_per_token_loop() -> None:
    logits = torch.randn(3, 5, 11, generator=_generator(), dtype=torch.float64) * 4  # [B, L, V]
    index = torch.randint(0, 11, (3, 5), generator=_generator(1))  # [B, L]
    got = selective_log_softmax(logits, index, temperature=0.7)
    for b in range(3):
        for t in range(5):
            scaled = [x / 0.7 for x in logits[b, t].tolist()]
            expected = scaled[index[b, t]] - math.log(sum(math.exp(x) for x in scaled))
            assert got[b, t].item() == pytest.approx(expected, abs=1e-12)


def test_selective_log_softmax_hand_values() -> None:
    # Row [ln 3, 0, 0]: softmax = [3/5, 1/5, 1/5]. At T = 2 the logits halve: [ln sqrt3, 0, 0] -> softmax
    # [sqrt3, 1, 1] / (2 + sqrt3).
    logits = torch.tensor([[[math.log(3.0), 0.0, 0.0]]], dtype=torch.float64)
    index = torch.tensor([[0]])
    assert selective_log_softmax(logits, index).exp().item() == pytest.approx(3 / 5)
    assert selective_log_softmax(logits, index, 2.0).exp().item() == pytest.approx(math.sqrt(3) / (2 + math.sqrt(3)))


def test_selective_log_softmax_bf16_computes_in_float32() -> None:
    logits = (torch.randn(2, 4, 300, generator=_generator()) * 5).bfloat16()  # [B, L, V]
    index = torch.randint(0, 300, (2, 4), generator=_generator(1))
    got = selective_log_softmax(logits, index, 0.7)
    expected = torch.log_softmax(logits.float() / 0.7, -1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_selective_log_softmax_gradcheck_and_matches_autograd_reference() -> None:
    logits = torch.randn(2, 3, 7, generator=_generator(), dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 7, (2, 3), generator=_generator(1))
    assert torch.autograd.gradcheck(lambda x: selective_log_softmax(x, index, 0.7), (logits,))
    weights = torch.randn(2, 3, generator=_generator(2), dtype=torch.float64)
    (ours,) = torch.autograd.grad((selective_log_softmax(logits, index, 0.7) * weights).sum(), logits)
    reference = torch.log_softmax(logits / 0.7, -1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    (theirs,) = torch.autograd.grad((reference * weights).sum(), logits)
    torch.testing.assert_close(ours, theirs)


def test_selective_log_softmax_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"expected logits \[B, L, V\]"):
        selective_log_softmax(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        selective_log_softmax(torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.long), 0.0)


# ---------------------------------------------------------------- completion_logprobs on a tiny Qwen2

PAD = 0


@pytest.fixture(scope="module")
def tiny_lm() -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=61,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=PAD,
    )
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).double().eval()


@pytest.fixture(scope="module")
def padded_batch() -> tuple[Tensor, Tensor, list[list[int]], list[list[int]]]:
    """Three prompts of lengths 2, 5, 3 (left-padded to 5) and completions of lengths 4, 1, 2 (right-padded to 4)."""
    g = _generator(3)
    prompts = [torch.randint(1, 61, (n,), generator=g).tolist() for n in (2, 5, 3)]
    completions = [torch.randint(1, 61, (n,), generator=g).tolist() for n in (4, 1, 2)]
    rows, masks = [], []
    for prompt, completion in zip(prompts, completions, strict=True):
        left, right = 5 - len(prompt), 4 - len(completion)
        rows.append([PAD] * left + prompt + completion + [PAD] * right)
        masks.append([0] * left + [1] * (len(prompt) + len(completion)) + [0] * right)
    return torch.tensor(rows), torch.tensor(masks), prompts, completions


def _unpadded_reference(model: nn.Module, prompt: list[int], completion: list[int], temperature: float) -> Tensor:
    """Full-logits log_softmax of one unpadded sequence, read at the completion tokens."""
    ids = torch.tensor([prompt + completion])  # [1, T]
    logits = model(input_ids=ids).logits[0]  # [T, V], every position
    logps = torch.log_softmax(logits / temperature, dim=-1)  # [T, V]
    return torch.stack([logps[len(prompt) + j - 1, tok] for j, tok in enumerate(completion)])  # [len(completion)]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_completion_logprobs_matches_unpadded_full_logits(tiny_lm, padded_batch, temperature: float) -> None:
    input_ids, attention_mask, prompts, completions = padded_batch
    with torch.no_grad():
        got = completion_logprobs(tiny_lm, input_ids, attention_mask, 4, temperature=temperature, chunk_size=2)
        for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            expected = _unpadded_reference(tiny_lm, prompt, completion, temperature)
            torch.testing.assert_close(got[row, : len(completion)], expected, rtol=0, atol=1e-10)
    assert got.shape == (3, 4) and not got.requires_grad


def test_completion_logprobs_temperature_changes_values(tiny_lm, padded_batch) -> None:
    input_ids, attention_mask, _, _ = padded_batch
    with torch.no_grad():
        at_one = completion_logprobs(tiny_lm, input_ids, attention_mask, 4, temperature=1.0)
        at_07 = completion_logprobs(tiny_lm, input_ids, attention_mask, 4, temperature=0.7)
    assert (at_one - at_07).abs()[attention_mask[:, -4:].bool()].min() > 1e-6


def test_completion_logprobs_chunking_is_invisible_and_keeps_only_completion_logits(tiny_lm, padded_batch) -> None:
    input_ids, attention_mask, _, _ = padded_batch
    shapes: list[tuple[int, ...]] = []
    hook = tiny_lm.lm_head.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
    try:
        with torch.no_grad():
            one_by_one = completion_logprobs(tiny_lm, input_ids, attention_mask, 4, chunk_size=1)
            assert shapes == [(1, 5, 61)] * 3  # three forwards, each with L + 1 = 5 positions of logits
            shapes.clear()
            all_at_once = completion_logprobs(tiny_lm, input_ids, attention_mask, 4, chunk_size=3)
            assert shapes == [(3, 5, 61)]
    finally:
        hook.remove()
    torch.testing.assert_close(one_by_one, all_at_once, rtol=0, atol=1e-12)


def test_completion_logprobs_gradient_matches_full_logits_reference(tiny_lm, padded_batch) -> None:
    input_ids, attention_mask, prompts, completions = padded_batch
    valid = attention_mask[:, -4:].bool()  # [B, L]
    got = completion_logprobs(tiny_lm, input_ids, attention_mask, 4, temperature=0.7, chunk_size=2)
    assert got.requires_grad
    params = [tiny_lm.model.embed_tokens.weight, tiny_lm.model.layers[0].self_attn.q_proj.weight]
    ours = torch.autograd.grad(got[valid].sum(), params)
    reference = sum(_unpadded_reference(tiny_lm, p, c, 0.7).sum() for p, c in zip(prompts, completions, strict=True))
    theirs = torch.autograd.grad(reference, params)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def test_completion_logprobs_rejects_bad_lengths(tiny_lm, padded_batch) -> None:
    input_ids, attention_mask, _, _ = padded_batch
    with pytest.raises(ValueError, match="completion_len must be in"):
        completion_logprobs(tiny_lm, input_ids, attention_mask, 9)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        completion_logprobs(tiny_lm, input_ids, attention_mask, 4, chunk_size=0)


# ---------------------------------------------------------------- group_advantages


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_matches_statistics_loop(scale: str) -> None:
    rewards = torch.rand(12, generator=_generator(), dtype=torch.float64) * 3  # 2 prompts x G = 6
    got = group_advantages(rewards, num_generations=6, scale=scale)
    values = rewards.tolist()
    for i, r in enumerate(values):
        group = values[i // 6 * 6 : i // 6 * 6 + 6]
        std = {"group": statistics.stdev(group), "batch": statistics.stdev(values), "none": None}[scale]
        centered = r - statistics.mean(group)
        expected = centered if std is None else centered / (std + 1e-4)
        assert got[i].item() == pytest.approx(expected, abs=1e-12)


def test_group_advantages_hand_values() -> None:
    # Group [1, 0, 0, 0]: mean 0.25; unbiased std = sqrt((0.75^2 + 3 * 0.25^2) / 3) = sqrt(0.75 / 3) = 0.5,
    # so A = [0.75, -0.25, -0.25, -0.25] / 0.5001.
    got = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), num_generations=4)
    torch.testing.assert_close(got, torch.tensor([0.75, -0.25, -0.25, -0.25]) / 0.5001)


def test_group_advantages_equal_rewards_are_exactly_zero() -> None:
    # In float32 a naive mean of six copies of 0.3 is off by 3e-8, which would leave advantages of ~3e-4.
    rewards = torch.tensor([0.3] * 6 + [1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    for scale in ("group", "batch", "none"):
        got = group_advantages(rewards, num_generations=6, scale=scale)
        assert torch.isfinite(got).all()
        assert torch.equal(got[:6], torch.zeros(6))
        assert (got[6:] != 0).all()
    assert torch.equal(group_advantages(torch.full((4,), 0.7), 2, "batch"), torch.zeros(4))


def test_group_advantages_rejects_bad_groups() -> None:
    with pytest.raises(ValueError, match="whole groups of num_generations >= 2"):
        group_advantages(torch.zeros(5), num_generations=2)
    with pytest.raises(ValueError, match="whole groups of num_generations >= 2"):
        group_advantages(torch.zeros(4), num_generations=1)
    with pytest.raises(ValueError, match="scale must be"):
        group_advantages(torch.zeros(4), num_generations=2, scale="prompt")  # type: ignore[arg-type]


# ---------------------------------------------------------------- k3_kl


def test_k3_kl_hand_values_and_loop() -> None:
    # delta = ref - logp: 0 -> 0; 1 -> e - 2; -1 -> 1/e + 1 - 1 = 1/e.
    logprobs = torch.tensor([[0.0, -1.0, -1.0]], dtype=torch.float64)
    ref = torch.tensor([[0.0, 0.0, -2.0]], dtype=torch.float64)
    torch.testing.assert_close(k3_kl(logprobs, ref), torch.tensor([[0.0, E - 2, 1 / E]], dtype=torch.float64))
    a = torch.randn(3, 4, generator=_generator(), dtype=torch.float64)
    b = torch.randn(3, 4, generator=_generator(1), dtype=torch.float64)
    got = k3_kl(a, b)
    for i in range(3):
        for t in range(4):
            d = b[i, t].item() - a[i, t].item()
            assert got[i, t].item() == pytest.approx(math.exp(d) - d - 1, abs=1e-12)
    assert (got >= 0).all()


def test_k3_kl_gradcheck() -> None:
    logprobs = torch.randn(2, 3, generator=_generator(), dtype=torch.float64, requires_grad=True)
    ref = torch.randn(2, 3, generator=_generator(1), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: k3_kl(x, ref), (logprobs,))


# ---------------------------------------------------------------- clipped_surrogate


def test_clipped_surrogate_hand_values() -> None:
    # Token 0: ratio e, A = +1 -> min(e, 1.2) = 1.2 -> loss -1.2, clipped high.
    # Token 1: ratio e, A = -1 -> min(-e, -1.2) = -e -> loss e, not clipped (the pessimistic bound is unclipped).
    # Token 2: ratio 1/e, A = -1 -> min(-1/e, -0.8) = -0.8 -> loss 0.8, clipped low.
    # Token 3: ratio 1/e, A = +1 -> min(1/e, 0.8) = 1/e -> loss -1/e, not clipped.
    logprobs = torch.tensor([[1.0], [1.0], [-1.0], [-1.0]], dtype=torch.float64)
    loss, low, high = clipped_surrogate(logprobs, torch.zeros_like(logprobs), torch.tensor([1.0, -1.0, -1.0, 1.0]))
    torch.testing.assert_close(loss, torch.tensor([[-1.2], [E], [0.8], [-1 / E]], dtype=torch.float64))
    assert low.squeeze(1).tolist() == [False, False, True, False]
    assert high.squeeze(1).tolist() == [True, False, False, False]


def test_clipped_surrogate_epsilon_high_asymmetry() -> None:
    # ratio 1.25 and A = +1: eps_high 0.2 clips to 1.2 (loss -1.2); eps_high 0.28 leaves 1.25 (loss -1.25).
    # ratio 0.75 and A = -1: the lower bound 0.8 applies either way -> min(-0.75, -0.8) = -0.8 -> loss 0.8.
    logprobs = torch.log(torch.tensor([[1.25], [0.75]], dtype=torch.float64))
    old, adv = torch.zeros_like(logprobs), torch.tensor([1.0, -1.0])
    symmetric, _, high_sym = clipped_surrogate(logprobs, old, adv, epsilon=0.2)
    asymmetric, low, high = clipped_surrogate(logprobs, old, adv, epsilon=0.2, epsilon_high=0.28)
    torch.testing.assert_close(symmetric.squeeze(1), torch.tensor([-1.2, 0.8], dtype=torch.float64))
    torch.testing.assert_close(asymmetric.squeeze(1), torch.tensor([-1.25, 0.8], dtype=torch.float64))
    assert high_sym.squeeze(1).tolist() == [True, False]
    assert high.squeeze(1).tolist() == [False, False] and low.squeeze(1).tolist() == [False, True]


def test_clipped_surrogate_matches_loop() -> None:
    logprobs = torch.randn(4, 5, generator=_generator(), dtype=torch.float64) * 0.3
    old = torch.randn(4, 5, generator=_generator(1), dtype=torch.float64) * 0.3
    adv = torch.randn(4, generator=_generator(2), dtype=torch.float64)
    loss, low, high = clipped_surrogate(logprobs, old, adv, epsilon=0.2, epsilon_high=0.28)
    for i in range(4):
        for t in range(5):
            r, a = math.exp(logprobs[i, t].item() - old[i, t].item()), adv[i].item()
            assert loss[i, t].item() == pytest.approx(-min(r * a, min(max(r, 0.8), 1.28) * a), abs=1e-12)
            assert low[i, t].item() == (r < 0.8 and a < 0)
            assert high[i, t].item() == (r > 1.28 and a > 0)


def test_clipped_surrogate_ratio_one_gives_policy_gradient() -> None:
    # old = logp.detach(): ratio 1, loss -A, and d loss / d logp = -A (never clipped).
    logprobs = torch.randn(3, 2, generator=_generator(), dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    loss, low, high = clipped_surrogate(logprobs, logprobs.detach(), adv)
    (grad,) = torch.autograd.grad(loss.sum(), logprobs)
    torch.testing.assert_close(grad, -adv.unsqueeze(1).expand(3, 2))
    assert not low.any() and not high.any()


def test_clipped_surrogate_gradcheck() -> None:
    # Ratios within (0.8, 1.2) or far outside it: finite differences must not straddle a clip kink.
    logprobs = torch.tensor([[0.05, 0.5, -0.5], [-0.1, 0.6, -0.7]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([1.5, -0.7], dtype=torch.float64)
    old = torch.zeros(2, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: clipped_surrogate(x, old, adv, 0.2, 0.28)[0], (logprobs,))


# ---------------------------------------------------------------- normalisations

PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_normalizations_hand_values() -> None:
    # Valid tokens: row 0 -> 1, 2; row 1 -> 4.
    # grpo: mean(mean(1, 2), mean(4)) = (1.5 + 4) / 2 = 2.75.   bnpo: (1 + 2 + 4) / 3 = 7/3.
    # dr_grpo: 7 / (2 rows * 4 max tokens) = 0.875.             dapo: 7 / 3.5 active tokens = 2.
    assert normalize_grpo(PER_TOKEN, MASK).item() == pytest.approx(2.75)
    assert normalize_bnpo(PER_TOKEN, MASK).item() == pytest.approx(7 / 3)
    assert normalize_dr_grpo(PER_TOKEN, MASK, max_completion_length=4).item() == pytest.approx(0.875)
    assert normalize_dapo(PER_TOKEN, MASK, num_active_tokens=3.5).item() == pytest.approx(2.0)
    assert normalize_dapo(PER_TOKEN, MASK, num_active_tokens=torch.tensor(3.5)).item() == pytest.approx(2.0)


def test_normalizations_match_loops() -> None:
    per_token = torch.randn(5, 6, generator=_generator(), dtype=torch.float64)
    mask = _random_mask(5, 6)
    rows = [[per_token[i, t].item() for t in range(6) if mask[i, t]] for i in range(5)]
    tokens = [x for row in rows for x in row]
    assert normalize_grpo(per_token, mask).item() == pytest.approx(sum(sum(r) / len(r) for r in rows) / 5)
    assert normalize_bnpo(per_token, mask).item() == pytest.approx(sum(tokens) / len(tokens))
    assert normalize_dr_grpo(per_token, mask, 8).item() == pytest.approx(sum(tokens) / (5 * 8))
    assert normalize_dapo(per_token, mask, 17.0).item() == pytest.approx(sum(tokens) / 17)


def test_dapo_over_micro_batches_and_ranks_is_the_global_token_mean() -> None:
    # 2 ranks x 2 micro-batches: summing each rank's micro-batch losses and averaging over ranks (as DDP does)
    # must equal the plain token mean of the whole step.
    per_token = torch.randn(8, 5, generator=_generator(), dtype=torch.float64)
    mask = _random_mask(8, 5)
    world_size, active = 2, mask.sum().item() / 2
    chunks = list(zip(per_token.split(2), mask.split(2), strict=True))  # 4 micro-batches
    per_rank = [sum(normalize_dapo(p, m, active) for p, m in chunks[r * 2 : r * 2 + 2]) for r in range(world_size)]
    assert (sum(per_rank) / world_size).item() == pytest.approx(normalize_bnpo(per_token, mask).item())


def test_fully_masked_batch_gives_zero_not_nan() -> None:
    empty = torch.zeros(2, 3, dtype=torch.long)
    for value in (
        normalize_grpo(PER_TOKEN, empty),
        normalize_bnpo(PER_TOKEN, empty),
        normalize_dr_grpo(PER_TOKEN, empty, 3),
        normalize_dapo(PER_TOKEN, empty, 0.0),
    ):
        assert value.item() == 0.0


def test_normalizations_gradcheck() -> None:
    per_token = PER_TOKEN.clone().requires_grad_(True)
    for fn in (
        lambda x: normalize_grpo(x, MASK),
        lambda x: normalize_bnpo(x, MASK),
        lambda x: normalize_dr_grpo(x, MASK, 4),
        lambda x: normalize_dapo(x, MASK, 3.5),
    ):
        assert torch.autograd.gradcheck(fn, (per_token,))


# ---------------------------------------------------------------- truncated IS and sampler mismatch


def test_token_truncate_is_weights_hand_values_and_detached() -> None:
    # exp(0 - (-0.1)) = 1.10517; exp(5) = 148.4 capped at 2; exp(-1) = 0.3679 (never raised to 1).
    old = torch.zeros(1, 3, requires_grad=True)
    weights = sampler_is_weights(old, torch.tensor([[-0.1, -5.0, 1.0]]), torch.ones(1, 3), "token_truncate", None, 2.0)
    torch.testing.assert_close(weights, torch.tensor([[math.exp(0.1), 2.0, math.exp(-1.0)]]))
    assert not weights.requires_grad


def test_logprob_gap_ignores_padding() -> None:
    # Valid |diffs|: 0.5, 0.1, 0.3 -> mean 0.3; the padded 1e6 gap must not count.
    sampler = torch.tensor([[-1.0, -2.0, 1e6], [-0.2, 0.0, 0.0]])
    trainer = torch.tensor([[-1.5, -1.9, 0.0], [-0.5, 0.0, 0.0]])
    assert logprob_gap(sampler, trainer, torch.tensor([[1, 1, 0], [1, 0, 0]])).item() == pytest.approx(0.3)


# ---------------------------------------------------------------- grpo_loss


Rows = list[list[float]]


def _loop_grpo_loss(
    logprobs: Rows,
    old: Rows,
    ref: Rows,
    adv: list[float],
    mask: list[list[bool]],
    loss_type: str,
    beta: float,
    eps: float,
    eps_high: float,
    max_len: int,
    active: float,
    is_w: Rows,
) -> tuple[float, float, float, float, float]:
    """Per-token python loops over the valid tokens: (loss, policy_loss, kl, clip_low, clip_high)."""
    n, length = len(mask), len(mask[0])
    rows, policy_rows, kls, lows, highs = [], [], [], [], []
    for i in range(n):
        row, policy_row = [], []
        for t in range(length):
            if not mask[i][t]:
                continue
            r, a = math.exp(logprobs[i][t] - old[i][t]), adv[i]
            surrogate = -min(r * a, min(max(r, 1 - eps), 1 + eps_high) * a) * is_w[i][t]
            d = ref[i][t] - logprobs[i][t]
            kls.append(math.exp(d) - d - 1)
            lows.append(r < 1 - eps and a < 0)
            highs.append(r > 1 + eps_high and a > 0)
            row.append(surrogate + beta * kls[-1])
            policy_row.append(surrogate)
        rows.append(row)
        policy_rows.append(policy_row)

    def reduce(rs: Rows) -> float:
        total = sum(sum(r) for r in rs)
        return {
            "grpo": sum(sum(r) / max(len(r), 1) for r in rs) / n,
            "bnpo": total / max(sum(len(r) for r in rs), 1),
            "dr_grpo": total / (n * max_len),
            "dapo": total / active,
        }[loss_type]

    count = max(len(kls), 1)
    return reduce(rows), reduce(policy_rows), sum(kls) / count, sum(lows) / count, sum(highs) / count


def _random_inputs(n: int = 6, length: int = 5, seed: int = 0) -> dict[str, Tensor]:
    g = _generator(seed)
    logprobs = -torch.rand(n, length, generator=g, dtype=torch.float64) * 2  # [N, L]
    return {
        "logprobs": logprobs,
        # Old-policy offsets up to +-0.5 so that some tokens fall outside [0.8, 1.28] and get clipped.
        "old": logprobs + (torch.rand(n, length, generator=g, dtype=torch.float64) - 0.5),
        "ref": logprobs + (torch.rand(n, length, generator=g, dtype=torch.float64) - 0.5),
        "adv": torch.randn(n, generator=g, dtype=torch.float64),
        "mask": _random_mask(n, length, seed),
        "is_w": 0.5 + torch.rand(n, length, generator=g, dtype=torch.float64),
    }


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_grpo_loss_matches_loop_reference(loss_type: str) -> None:
    x = _random_inputs()
    out = grpo_loss(
        x["logprobs"],
        x["old"],
        x["ref"],
        x["adv"],
        x["mask"],
        loss_type=loss_type,
        beta=0.04,
        epsilon=0.2,
        epsilon_high=0.28,
        max_completion_length=7,
        num_active_tokens=9.0,
        is_weights=x["is_w"],
    )
    lists = {k: v.tolist() for k, v in x.items()}
    expected = _loop_grpo_loss(
        lists["logprobs"],
        lists["old"],
        lists["ref"],
        lists["adv"],
        x["mask"].tolist(),
        loss_type,
        0.04,
        0.2,
        0.28,
        7,
        9.0,
        lists["is_w"],
    )
    loss, policy, kl, low, high = expected
    assert out.loss.item() == pytest.approx(loss, abs=1e-12)
    assert out.policy_loss.item() == pytest.approx(policy, abs=1e-12)
    assert out.kl.item() == pytest.approx(kl, abs=1e-12)
    assert out.clip_ratio_low.item() == pytest.approx(low) and out.clip_ratio_high.item() == pytest.approx(high)
    assert out.clip_ratio.item() == pytest.approx(low + high)  # the two sides are disjoint
    assert 0 < low and 0 < high  # the inputs do exercise both clip sides


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_grpo_loss_gradcheck(loss_type: str) -> None:
    x = _random_inputs(n=3, length=3, seed=1)
    # Keep ratios strictly inside (0.8, 1.2) so no finite-difference step crosses a clip kink.
    old = x["logprobs"] + 0.1 * (torch.rand(3, 3, generator=_generator(5), dtype=torch.float64) - 0.5)
    kwargs = {"loss_type": loss_type, "max_completion_length": 3, "num_active_tokens": 2.5, "is_weights": x["is_w"]}

    def loss(logprobs: Tensor) -> Tensor:
        return grpo_loss(logprobs, old, x["ref"], x["adv"], x["mask"], **kwargs).loss

    assert torch.autograd.gradcheck(loss, (x["logprobs"].clone().requires_grad_(True),))


def test_grpo_loss_single_token_completions_hand_value() -> None:
    # N = 2, L = 1, ratio 1 (old = None): surrogate = -A = [-1, +1].
    # KL row 0: ref = logp -> 0. Row 1: delta = ref - logp = 1 -> e - 2 = 0.71828.
    # per_token = [-1, 1 + 0.04 * (e - 2)]; every normalisation divides the sum by 2 here
    # (grpo: two rows of one token; bnpo: 2 tokens; dr_grpo: 2 rows x 1; dapo: 2 active tokens).
    logprobs = torch.tensor([[-1.0], [-2.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.0], [-1.0]], dtype=torch.float64)
    expected = (-1 + 1 + 0.04 * (E - 2)) / 2
    for loss_type in LOSS_TYPES:
        out = grpo_loss(
            logprobs,
            None,
            ref,
            torch.tensor([1.0, -1.0], dtype=torch.float64),
            torch.ones(2, 1),
            loss_type=loss_type,
            max_completion_length=1,
            num_active_tokens=2.0,
        )
        assert out.loss.item() == pytest.approx(expected)
        assert out.kl.item() == pytest.approx((E - 2) / 2)
        assert out.clip_ratio.item() == 0.0


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_grpo_loss_padding_never_contributes(loss_type: str) -> None:
    x = _random_inputs(seed=2)
    pad = ~x["mask"]

    def run(garbage: bool) -> tuple[Tensor, Tensor]:
        def dirty(t: Tensor, seed: int) -> Tensor:
            # Finite values whose differences reach +-1800, so any exp() of them at padding overflows to inf.
            noise = torch.where(torch.rand(t.shape, generator=_generator(seed)) > 0.5, 900.0, -900.0).double()
            return torch.where(pad, noise if garbage else 0.0, t)

        logprobs = dirty(x["logprobs"], 10).requires_grad_(True)
        out = grpo_loss(
            logprobs,
            dirty(x["old"], 11),
            dirty(x["ref"], 12),
            x["adv"],
            x["mask"],
            loss_type=loss_type,
            max_completion_length=5,
            num_active_tokens=11.0,
            is_weights=dirty(x["is_w"], 13),
            epsilon_high=0.28,
        )
        (grad,) = torch.autograd.grad(out.loss, logprobs)
        return torch.stack([out.loss, out.policy_loss, out.kl, out.clip_ratio]), grad

    clean_stats, clean_grad = run(garbage=False)
    dirty_stats, dirty_grad = run(garbage=True)
    assert torch.isfinite(dirty_grad).all()
    torch.testing.assert_close(dirty_stats, clean_stats, rtol=0, atol=0)
    torch.testing.assert_close(dirty_grad, clean_grad, rtol=0, atol=0)
    assert (dirty_grad[pad] == 0).all() and (dirty_grad[~pad] != 0).all()


def test_grpo_loss_equal_rewards_give_zero_policy_gradient() -> None:
    # An all-equal group has advantage exactly 0: with beta = 0 the loss and its gradient are exactly 0.
    adv = group_advantages(torch.tensor([0.3, 0.3, 0.3]), num_generations=3)
    logprobs = torch.randn(3, 4, generator=_generator(), dtype=torch.float64, requires_grad=True)
    out = grpo_loss(logprobs, None, None, adv, torch.ones(3, 4), beta=0.0)
    (grad,) = torch.autograd.grad(out.loss, logprobs)
    assert out.loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))
    assert out.kl.item() == 0.0


def test_grpo_loss_mask_truncated_completions_removes_rows() -> None:
    x = _random_inputs(seed=3)
    truncated = torch.tensor([False, True, False, False, True, False])
    keep = ~truncated
    common = {"epsilon_high": 0.28, "is_weights": x["is_w"]}
    masked = grpo_loss(
        x["logprobs"],
        x["old"],
        x["ref"],
        x["adv"],
        x["mask"],
        truncated=truncated,
        mask_truncated_completions=True,
        **common,
    )
    subset = grpo_loss(
        x["logprobs"][keep],
        x["old"][keep],
        x["ref"][keep],
        x["adv"][keep],
        x["mask"][keep],
        epsilon_high=0.28,
        is_weights=x["is_w"][keep],
    )
    torch.testing.assert_close(_stack(masked), _stack(subset))
    # Off by default: the flags alone change nothing.
    ignored = grpo_loss(x["logprobs"], x["old"], x["ref"], x["adv"], x["mask"], truncated=truncated, **common)
    plain = grpo_loss(x["logprobs"], x["old"], x["ref"], x["adv"], x["mask"], **common)
    torch.testing.assert_close(_stack(ignored), _stack(plain))
    assert not torch.allclose(masked.loss, plain.loss)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_grpo_loss_higher_advantage_lower_loss(loss_type: str) -> None:
    x = _random_inputs(seed=4)
    kwargs = {"loss_type": loss_type, "max_completion_length": 5, "num_active_tokens": 10.0, "epsilon_high": 0.28}
    low = grpo_loss(x["logprobs"], x["old"], x["ref"], x["adv"], x["mask"], **kwargs).loss
    high = grpo_loss(x["logprobs"], x["old"], x["ref"], x["adv"] + 0.5, x["mask"], **kwargs).loss
    assert high < low


def test_grpo_loss_kl_adds_beta_times_k3_and_beta_zero_has_no_kl_gradient() -> None:
    x = _random_inputs(seed=5)
    logprobs = x["logprobs"].clone().requires_grad_(True)
    with_kl = grpo_loss(logprobs, x["old"], x["ref"], x["adv"], x["mask"], beta=0.04)
    without_ref = grpo_loss(logprobs, x["old"], None, x["adv"], x["mask"], beta=0.0)
    beta_zero = grpo_loss(logprobs, x["old"], x["ref"], x["adv"], x["mask"], beta=0.0)
    assert with_kl.loss.item() == pytest.approx(without_ref.loss.item() + 0.04 * with_kl.kl.item())
    assert without_ref.kl.item() == 0.0 and beta_zero.kl.item() == pytest.approx(with_kl.kl.item())
    (g_zero,) = torch.autograd.grad(beta_zero.loss, logprobs)
    (g_none,) = torch.autograd.grad(without_ref.loss, logprobs)
    torch.testing.assert_close(g_zero, g_none, rtol=0, atol=0)


def test_grpo_loss_old_none_equals_detached_logprobs() -> None:
    x = _random_inputs(seed=6)
    logprobs = x["logprobs"].clone().requires_grad_(True)
    implicit = grpo_loss(logprobs, None, x["ref"], x["adv"], x["mask"])
    explicit = grpo_loss(logprobs, logprobs.detach(), x["ref"], x["adv"], x["mask"])
    torch.testing.assert_close(_stack(implicit), _stack(explicit))
    assert implicit.clip_ratio.item() == 0.0
    grads = [torch.autograd.grad(o.loss, logprobs)[0] for o in (implicit, explicit)]
    torch.testing.assert_close(grads[0], grads[1])


def test_grpo_loss_outputs_are_detached_except_loss() -> None:
    x = _random_inputs()
    out = grpo_loss(x["logprobs"].requires_grad_(True), None, x["ref"], x["adv"], x["mask"])
    assert out.loss.requires_grad and out.loss.dim() == 0
    assert not any(v.requires_grad for v in out[1:] if v is not None)


def test_grpo_loss_rejects_missing_arguments() -> None:
    x = _random_inputs()
    args = (x["logprobs"], None, x["ref"], x["adv"], x["mask"])
    with pytest.raises(ValueError, match="loss_type='dr_grpo' needs max_completion_length"):
        grpo_loss(*args, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="loss_type='dapo' needs num_active_tokens"):
        grpo_loss(*args, loss_type="dapo")
    with pytest.raises(ValueError, match="loss_type must be one of"):
        grpo_loss(*args, loss_type="ppo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs ref_logprobs"):
        grpo_loss(x["logprobs"], None, None, x["adv"], x["mask"], beta=0.04)
    with pytest.raises(ValueError, match="needs the truncated flags"):
        grpo_loss(*args, mask_truncated_completions=True)


def test_masked_mean_hand_value() -> None:
    # (1 + 4) / 2 with the padded 1e30 and 7 excluded.
    assert masked_mean(torch.tensor([[1.0, 1e30], [4.0, 7.0]]), torch.tensor([[1, 0], [1, 0]])).item() == 2.5
