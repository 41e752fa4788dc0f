"""Padding-free log-prob passes: the packed (and shared-prompt) layouts give the padded computation's values and
gradients, on a tiny float32 Qwen2 with sdpa and eager attention."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from transformers import Qwen2Config, Qwen2ForCausalLM

from openrs_pl.grpo.config import GRPOConfig
from openrs_pl.grpo.logprobs import (
    SCORING_PACK_TOKENS,
    completion_logprobs,
    packed_completion_logprobs,
    score_completions,
)
from openrs_pl.grpo.packing import PackedBatch, pack_rows

PAD = 0
TEMPERATURE = 0.7
PROMPT_LENGTHS = (3, 6)  # two prompts ...
COMPLETION_LENGTHS = ((5, 1, 8), (2, 7, 4))  # ... with G = 3 completions each, of spread lengths


def tiny_lm(attn_implementation: str) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD, attn_implementation=attn_implementation,
    )  # fmt: skip
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).float().eval()


def grouped_batch() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Prompts left-padded to 6, completions right-padded to 8; the G completions of a prompt are consecutive."""
    g = torch.Generator().manual_seed(3)
    prompt_ids, prompt_mask, completion_ids, completion_mask = [], [], [], []
    for p_len, c_lens in zip(PROMPT_LENGTHS, COMPLETION_LENGTHS, strict=True):
        prompt = torch.randint(1, 61, (p_len,), generator=g).tolist()
        for c_len in c_lens:
            completion = torch.randint(1, 61, (c_len,), generator=g).tolist()
            prompt_ids.append([PAD] * (6 - p_len) + prompt)
            prompt_mask.append([0] * (6 - p_len) + [1] * p_len)
            completion_ids.append(completion + [PAD] * (8 - c_len))
            completion_mask.append([1] * c_len + [0] * (8 - c_len))
    return tuple(torch.tensor(x) for x in (prompt_ids, prompt_mask, completion_ids, completion_mask))  # type: ignore[return-value]


def padded(model: Qwen2ForCausalLM, batch: tuple[Tensor, ...], return_entropy: bool = False):  # [N, L]
    prompt_ids, prompt_mask, completion_ids, completion_mask = batch
    ids, mask = torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1)
    return completion_logprobs(model, ids, mask, 8, TEMPERATURE, chunk_size=2, return_entropy=return_entropy)


def grads(model: Qwen2ForCausalLM, logprobs: Tensor, mask: Tensor) -> list[Tensor]:
    # A weighted sum so that every token's gradient counts differently (a permuted scatter would show).
    weights = torch.linspace(0.5, 1.5, logprobs.numel()).view_as(logprobs)
    return list(torch.autograd.grad((logprobs * weights)[mask.bool()].sum(), list(model.parameters())))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize(("pack_tokens", "share"), [(64, False), (20, False), (64, True), (20, True)])
def test_packed_logprobs_and_gradients_equal_the_padded_computation(attn: str, pack_tokens: int, share: bool) -> None:
    model = tiny_lm(attn)
    batch = grouped_batch()
    mask = batch[3]
    packed = pack_rows(*batch, pack_tokens=pack_tokens, share_prompts=share)
    assert len(packed.rows) < mask.size(0), "several sequences share a row"
    expected = padded(model, batch)
    got = packed_completion_logprobs(model, packed, TEMPERATURE)
    assert isinstance(got, Tensor) and got.shape == mask.shape
    valid = mask.bool()
    torch.testing.assert_close(got[valid], expected[valid], rtol=0, atol=1e-5)
    assert (got[~valid] == 0).all()
    for a, b in zip(grads(model, got, mask), grads(model, expected, mask), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_packed_entropies_equal_the_padded_ones() -> None:
    model = tiny_lm("sdpa")
    batch = grouped_batch()
    valid = batch[3].bool()
    with torch.no_grad():
        _, expected = padded(model, batch, return_entropy=True)
        for share in (False, True):
            _, got = packed_completion_logprobs(
                model, pack_rows(*batch, pack_tokens=64, share_prompts=share), TEMPERATURE, return_entropy=True
            )
            torch.testing.assert_close(got[valid], expected[valid], rtol=0, atol=1e-5)


def test_no_padding_is_computed_and_prompts_are_shared_once_per_group() -> None:
    batch = grouped_batch()
    completion_tokens = sum(map(sum, COMPLETION_LENGTHS))
    plain = pack_rows(*batch, pack_tokens=64)
    shared = pack_rows(*batch, pack_tokens=64, share_prompts=True)
    assert plain.num_tokens == 3 * sum(PROMPT_LENGTHS) + completion_tokens  # each prompt G times, no padding
    assert shared.num_tokens == sum(PROMPT_LENGTHS) + completion_tokens  # each prompt once
    assert batch[0].numel() + batch[2].numel() == 84  # the padded batch computes 6 x (6 + 8) tokens


def test_shared_layout_positions_and_mask() -> None:
    """Prompt [5, 6] then completions [7, 8] and [9]: positions continue from the prompt in each completion,
    each completion sees the prompt and itself only; the first token of both is predicted by the prompt's last."""
    prompt_ids = torch.tensor([[0, 5, 6], [0, 5, 6]])
    prompt_mask = torch.tensor([[0, 1, 1], [0, 1, 1]])
    completion_ids = torch.tensor([[7, 8], [9, 0]])
    completion_mask = torch.tensor([[1, 1], [1, 0]])
    (row,) = pack_rows(prompt_ids, prompt_mask, completion_ids, completion_mask, 16, share_prompts=True).rows
    assert row.input_ids.tolist() == [[5, 6, 7, 8, 9]]
    assert row.position_ids.tolist() == [[0, 1, 2, 3, 2]]
    assert row.attention_mask is not None
    assert row.attention_mask[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1],  # completion 2 skips completion 1
    ]
    assert row.logit_index.tolist() == [1, 2, 1]
    assert row.targets.tolist() == [[7, 8, 9]]
    assert (row.rows.tolist(), row.cols.tolist()) == ([0, 0, 1], [0, 1, 0])


def test_plain_layout_restarts_positions_and_splits_on_the_budget() -> None:
    prompt_ids = torch.tensor([[5, 6], [5, 6], [4, 3]])
    prompt_mask = torch.ones_like(prompt_ids)
    completion_ids = torch.tensor([[7, 8, 9], [9, 0, 0], [1, 2, 0]])
    completion_mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]])
    packed = pack_rows(prompt_ids, prompt_mask, completion_ids, completion_mask, pack_tokens=7)
    # Segments of 5, 3 and 4 tokens: first-fit decreasing gives [5] and [4, 3].
    assert [r.input_ids.tolist() for r in packed.rows] == [[[5, 6, 7, 8, 9]], [[4, 3, 1, 2, 5, 6, 9]]]
    assert packed.rows[1].position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    assert all(r.attention_mask is None for r in packed.rows)
    # A group that does not fit the budget is split, each part repeating the prompt.
    shared = pack_rows(prompt_ids, prompt_mask, completion_ids, completion_mask, pack_tokens=5, share_prompts=True)
    assert sorted(r.input_ids.size(1) for r in shared.rows) == [3, 4, 5]


def test_bad_layouts_are_rejected() -> None:
    ids, ones = torch.tensor([[5, 6]]), torch.ones(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="pack_tokens must be >= 1"):
        pack_rows(ids, ones, ids, ones, pack_tokens=0)
    with pytest.raises(ValueError, match="at least one prompt token"):
        pack_rows(ids, torch.zeros_like(ids), ids, ones, pack_tokens=8)
    model = tiny_lm("sdpa")
    model.config._attn_implementation = "flash_attention_2"  # only read, never run: the mask is refused first
    packed: PackedBatch = pack_rows(ids, ones, ids, ones, pack_tokens=8, share_prompts=True)
    with pytest.raises(ValueError, match="shared prompts need sdpa or eager"):
        packed_completion_logprobs(model, packed)


def test_config_options_are_checked() -> None:
    from openrs_pl.grpo.config import GRPOConfig

    with pytest.raises(ValueError, match="share_prompts needs grpo.packing"):
        GRPOConfig(share_prompts=True)
    with pytest.raises(ValueError, match="pack_tokens must be >= 1"):
        GRPOConfig(packing=True, pack_tokens=0)
    assert GRPOConfig(packing=True, share_prompts=True).pack_tokens == 4096


def test_scoring_for_a_generation_thread_packs_within_its_budget_and_equals_the_padded_pass(tiny_model_dir) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    lengths: list[int] = []
    model.register_forward_pre_hook(
        lambda _, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    prompts = [[5 + i] * 100 for i in range(4) for _ in range(2)]  # 4 prompts x 2 completions, ~1,300 tokens in all
    completions = [[7 + i] * (60 + 3 * i) for i in range(8)]
    packed = score_completions(model, prompts, completions, 0.7, GRPOConfig(packing=True), pad_token_id=0)
    assert len(lengths) >= 3 and max(lengths) <= SCORING_PACK_TOKENS  # the config's 4096 is capped
    padded = score_completions(model, prompts, completions, 0.7, GRPOConfig(packing=False), pad_token_id=0)
    assert [len(row) for row in packed] == [len(c) for c in completions]
    torch.testing.assert_close(torch.tensor(sum(packed, [])), torch.tensor(sum(padded, [])), atol=1e-5, rtol=0)
