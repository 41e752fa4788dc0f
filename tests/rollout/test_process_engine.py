"""The generator process: same samples as the in-process HF engine, requests and weight pushes applied in order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from openrs_pl.rollout.engine import AsyncGenerationEngine
from openrs_pl.rollout.hf_engine import HFEngine
from openrs_pl.rollout.process_engine import (
    ProcessEngine,
    ProcessEngineConfig,
    check_layout,
    flat_buffers,
    pack,
    unpack,
    weight_layout,
)
from openrs_pl.rollout.types import SamplingConfig

SAMPLING = SamplingConfig(n=3, temperature=1.0, max_tokens=8, seed=5)


@pytest.fixture(scope="module")
def setup(tiny_model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [tokenizer(t, add_special_tokens=False).input_ids for t in ("What is 1 + 1?", "Say hi", "2 * 3 =")]
    return tokenizer, prompts


@pytest.fixture(scope="module")
def shared(tiny_model_dir: Path, setup) -> Iterator[tuple[ProcessEngine, torch.nn.Module]]:
    """One worker for the tests that leave it usable (starting one takes seconds)."""
    tokenizer, _ = setup
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    engine = ProcessEngine(policy, tokenizer.eos_token_id, tokenizer.pad_token_id)
    yield engine, policy
    engine.close()


@pytest.fixture
def policy(shared) -> torch.nn.Module:
    return shared[1]


@pytest.fixture
def engine(shared) -> ProcessEngine:
    engine, policy = shared
    engine.sync_weights(policy, force=True)  # whatever an earlier test did to the policy, the worker has it now
    return engine


def in_process(model: torch.nn.Module, tokenizer, prompts: list[list[int]], sampling: SamplingConfig) -> list:
    """What the trainer-side HF engine samples from ``model``."""
    engine = HFEngine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)  # type: ignore[arg-type]
    return engine.generate(prompts, sampling).completion_ids


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.add_(torch.randn(param.shape, generator=generator) * 0.5)


def test_pushes_apply_between_requests_in_order_and_versions_say_which(engine, policy, setup) -> None:
    tokenizer, prompts = setup
    assert isinstance(engine, AsyncGenerationEngine)
    base = in_process(policy, tokenizer, prompts, SAMPLING)
    start = engine.weights_version

    # Several requests queued with two pushes among them, all before collecting anything.
    first = engine.submit(prompts, SAMPLING)
    perturb(policy, seed=1)
    one = in_process(policy, tokenizer, prompts, SAMPLING)
    engine.sync_weights(policy)
    second = engine.submit(prompts, SAMPLING)
    perturb(policy, seed=2)  # after the push: the worker must not see this until the next push
    third = engine.submit(prompts, SAMPLING)
    engine.sync_weights(policy)
    two = in_process(policy, tokenizer, prompts, SAMPLING)
    fourth = engine.submit(prompts, SAMPLING)
    assert engine.weights_version == start + 2

    outputs = [engine.collect(t) for t in (fourth, second, first, third)]  # collected out of order on purpose
    assert [o.weights_version - start for o in outputs] == [2, 1, 0, 1]
    assert [o.completion_ids for o in outputs] == [two, one, base, one]
    assert len({str(base), str(one), str(two)}) == 3, "the perturbations change the samples (else nothing is shown)"


def test_seeded_sampling_equals_the_in_process_engine_and_repeats(engine, policy, setup) -> None:
    tokenizer, prompts = setup
    out = engine.generate(prompts, SAMPLING)
    assert out.completion_ids == in_process(policy, tokenizer, prompts, SAMPLING)
    assert out.finished == [bool(c) and c[-1] == tokenizer.eos_token_id for c in out.completion_ids]
    assert engine.generate(prompts, SAMPLING).completion_ids == out.completion_ids
    other_seed = SamplingConfig(**{**vars(SAMPLING), "seed": 6})
    assert engine.generate(prompts, other_seed).completion_ids != out.completion_ids


def test_engine_from_a_checkpoint_path_and_sync_every(tiny_model_dir: Path, setup) -> None:
    tokenizer, prompts = setup
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = ProcessEngineConfig(sync_every=2)
    engine = ProcessEngine(str(tiny_model_dir), tokenizer.eos_token_id, tokenizer.pad_token_id, config)
    try:
        base = in_process(policy, tokenizer, prompts, SAMPLING)
        assert engine.generate(prompts, SAMPLING).completion_ids == base
        perturb(policy, seed=3)
        engine.sync_weights(policy)  # call 1 of 2: skipped
        assert engine.weights_version == 0
        assert engine.generate(prompts, SAMPLING).completion_ids == base
        engine.sync_weights(policy)  # call 2 of 2: pushed
        assert engine.weights_version == 1
        assert engine.generate(prompts, SAMPLING).completion_ids == in_process(policy, tokenizer, prompts, SAMPLING)
        perturb(policy, seed=4)
        engine.sync_weights(policy, force=True)  # call 3: skipped but for force
        assert engine.weights_version == 2
        assert engine.generate(prompts, SAMPLING).completion_ids == in_process(policy, tokenizer, prompts, SAMPLING)
    finally:
        engine.close()
    assert engine._process.exitcode == 0, "the worker left by itself, cleanly, when asked to close"


def test_a_push_does_not_wait_for_queued_generation(engine, policy, setup) -> None:
    tokenizer, prompts = setup
    long = SamplingConfig(n=8, temperature=1.0, max_tokens=300, seed=1)
    engine.generate(prompts[:1], SAMPLING)  # the worker is warm
    version = engine.weights_version
    ticket = engine.submit(prompts, long)  # several seconds of decoding on one thread
    engine.sync_weights(policy)
    # Had the push waited for the worker to reach it in its queue, the long request's result would be there.
    assert engine._results.empty(), "sync_weights returned only after the queued generation had finished"
    assert engine.collect(ticket).weights_version == version


def test_a_failed_request_raises_in_the_trainer_and_the_engine_goes_on(engine, setup) -> None:
    _, prompts = setup
    with pytest.raises(RuntimeError, match="generation failed in the generator process"):
        engine.generate([[10**7]], SAMPLING)  # token id outside the vocabulary
    assert len(engine.generate(prompts, SAMPLING).completion_ids) == 3 * SAMPLING.n


def test_a_push_of_another_architecture_stops_the_worker_with_a_clear_error(tiny_model_dir: Path, setup) -> None:
    tokenizer, prompts = setup
    engine = ProcessEngine(str(tiny_model_dir), tokenizer.eos_token_id, tokenizer.pad_token_id)
    try:
        engine.sync_weights(torch.nn.Linear(3, 3))
        with pytest.raises(RuntimeError, match="does not match the generator's model: weight"):
            engine.generate(prompts, SAMPLING)
    finally:
        engine.close()
    assert engine._process.exitcode == 1


def test_pack_unpack_round_trip_keeps_ties_and_dtypes() -> None:
    shared = torch.arange(6.0).view(2, 3)
    state = {"w": shared, "tied": shared, "h": torch.arange(4, dtype=torch.float16), "b": torch.tensor([7.0])}
    layout = weight_layout(state)
    assert [s.name for s in layout] == ["w", "h", "b"]
    buffers = flat_buffers(layout, torch.device("cpu"))
    assert {d: b.numel() for d, b in buffers.items()} == {torch.float32: 7, torch.float16: 4}
    pack(state, layout, buffers)
    target = {k: torch.zeros_like(v) for k, v in state.items()}
    unpack(buffers, layout, target)
    for name in ("w", "h", "b"):
        assert torch.equal(target[name], state[name]) and target[name].dtype == state[name].dtype
    with pytest.raises(ValueError, match="h is"):
        check_layout(layout, {**target, "h": torch.zeros(4)})


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="mode"):
        ProcessEngineConfig(mode="remote")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backend"):
        ProcessEngineConfig(backend="mpi")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sync_every"):
        ProcessEngineConfig(sync_every=0)
    with pytest.raises(ValueError, match="rollout.process.generator must be 'hf' or 'vllm'"):
        ProcessEngineConfig(generator="tgi")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size applies to generator 'hf' only"):
        ProcessEngineConfig(generator="vllm", batch_size=4)


def test_the_vllm_generator_needs_a_checkpoint_folder_before_anything_starts(tiny_model_dir: Path) -> None:
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError, match="checkpoint folder"):
        ProcessEngine(policy, 1, 2, ProcessEngineConfig(generator="vllm"))


def test_a_flash_attention_policy_gets_an_sdpa_generator_on_cpu(tiny_model_dir: Path) -> None:
    from transformers import AutoConfig

    from openrs_pl.rollout.process_engine import _build_model, _WorkerSpec

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config._attn_implementation = "flash_attention_2"  # as a GPU policy loaded with the recipe's setting
    spec = _WorkerSpec((config, None, torch.float32), "cpu", "gloo", 1, 2, None, 1, "127.0.0.1", 0, 1.0, 0)
    model = _build_model(spec)
    assert model.config._attn_implementation == "sdpa"
