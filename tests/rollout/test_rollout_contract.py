"""The rollout contract: what the HF engine and the callback hand the module (EOS, truncation, seeds, advantages)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from openrs_pl.rewards import RewardSpec
from openrs_pl.rewards.reward_set import RewardResult
from openrs_pl.rollout.assemble import assemble_rollout
from openrs_pl.rollout.callback import RolloutCallback
from openrs_pl.rollout.hf_engine import HFEngine
from openrs_pl.rollout.types import GenerationOutput, PromptBatch, SamplingConfig

MAX_TOKENS = 6


@pytest.fixture(scope="module")
def model_and_prompts(tiny_model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompts = [tokenizer(t, add_special_tokens=False).input_ids for t in ("What is 1 + 1?", "Say hi", "2 * 3 =")]
    return model, tokenizer, prompts


def test_eos_is_kept_and_truncated_marks_exactly_the_rows_at_the_limit(model_and_prompts) -> None:
    model, tokenizer, prompts = model_and_prompts
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=MAX_TOKENS)
    # Greedy decoding is deterministic: use as "EOS" a token that prompt 0's completion emits early and prompt 1's
    # never does, so one row must stop at it and one must run into the length limit.
    unused = len(tokenizer) - 1
    probe = HFEngine(model, eos_token_id=unused, pad_token_id=tokenizer.pad_token_id).generate(prompts, greedy)
    eos = next(t for t in probe.completion_ids[0][:3] if t not in probe.completion_ids[1])
    out = HFEngine(model, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id).generate(prompts, greedy)

    for ids, finished in zip(out.completion_ids, out.finished, strict=True):
        if finished:
            assert ids[-1] == eos and eos not in ids[:-1], "a finished completion ends with its first EOS, kept"
        else:
            assert len(ids) == MAX_TOKENS and eos not in ids, "an unfinished completion ran into the limit"
    assert out.finished[0] and not out.finished[1]

    rewards = torch.zeros(len(prompts))
    batch = assemble_rollout(prompts, out, rewards, rewards[:, None], rewards, 1, tokenizer.pad_token_id)
    lengths = [len(ids) for ids in out.completion_ids]
    assert batch.completion_mask.sum(dim=1).tolist() == lengths, "the EOS token is inside the loss mask"
    assert batch.truncated.tolist() == [not f for f in out.finished]
    for row, n in enumerate(lengths):
        assert batch.completion_ids[row, :n].tolist() == out.completion_ids[row]


def test_seeded_sampling_is_reproducible(model_and_prompts) -> None:
    model, tokenizer, prompts = model_and_prompts
    engine = HFEngine(model, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)

    def sample(seed: int) -> list[list[int]]:
        return engine.generate(prompts, SamplingConfig(n=3, temperature=1.0, max_tokens=8, seed=seed)).completion_ids

    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = sample(5)
    assert torch.equal(torch.get_rng_state(), state), "a seeded request leaves the global generator alone"
    assert sample(5) == first
    assert sample(6) != first


def test_generation_seconds_are_the_engine_calls_own_wall_time(model_and_prompts) -> None:
    """``generation_s`` spans every chunk of the call (batch_size=1: one chunk per prompt), and nothing outside it."""
    model, tokenizer, prompts = model_and_prompts
    engine = HFEngine(model, tokenizer.eos_token_id, tokenizer.pad_token_id, batch_size=1)
    began = time.perf_counter()
    out = engine.generate(prompts, SamplingConfig(n=2, temperature=1.0, max_tokens=MAX_TOKENS, seed=0))
    wall = time.perf_counter() - began
    assert out.generation_s is not None and 0.5 * wall < out.generation_s <= wall


@pytest.mark.parametrize(("top_k", "top_p"), [(0, 1.0), (5, 0.9)])
def test_sampler_logprobs_are_the_drawn_tokens_log_probs(model_and_prompts, top_k: int, top_p: float) -> None:
    """The HF engine's reported log-probs equal a full forward's log-softmax of the warped logits at each token."""
    model, tokenizer, prompts = model_and_prompts
    engine = HFEngine(model, tokenizer.eos_token_id, tokenizer.pad_token_id, logprobs=True)
    sampling = SamplingConfig(n=2, temperature=0.7, top_k=top_k, top_p=top_p, max_tokens=8, seed=3)
    out = engine.generate(prompts, sampling)
    assert out.logprobs is not None
    with torch.no_grad():
        for i, (ids, lps) in enumerate(zip(out.completion_ids, out.logprobs, strict=True)):
            prompt = prompts[i // 2]
            logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1 : -1] / 0.7  # [L, V]
            if top_k:
                kth = logits.topk(top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            if top_p < 1.0:  # drop the tokens after the smallest prefix (by probability) reaching top_p
                probs, order = logits.softmax(-1).sort(dim=-1, descending=True)
                drop = (probs.cumsum(-1) - probs) >= top_p
                logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
            expected = logits.log_softmax(-1).gather(1, torch.tensor(ids)[:, None])[:, 0]
            torch.testing.assert_close(torch.tensor(lps), expected, atol=1e-4, rtol=0)
    plain = HFEngine(model, tokenizer.eos_token_id, tokenizer.pad_token_id).generate(prompts, sampling)
    assert plain.logprobs is None, "off by default"
    assert plain.completion_ids == out.completion_ids, "reporting log-probs does not change the samples"


def expected_advantages(rewards: torch.Tensor, g: int, scale: str) -> torch.Tensor:
    groups = rewards.view(-1, g)
    centred = (groups - groups.mean(dim=1, keepdim=True)).flatten()
    if scale == "none":
        return centred
    std = groups.std(dim=1, keepdim=True).expand_as(groups).flatten() if scale == "group" else rewards.std()
    return centred / (std + 1e-4)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_scale_rewards_reaches_the_advantages(model_and_prompts, scale: str) -> None:
    _, tokenizer, _ = model_and_prompts
    g = 3
    callback = RolloutCallback(rewards=[RewardSpec("format")], num_generations=g, scale_rewards=scale)  # type: ignore[arg-type]
    rewards = torch.tensor([0.0, 1.0, 3.0, 2.0, 2.5, 7.0])
    callback.reward_set = lambda texts, prompts, columns, completion_ids: RewardResult(  # type: ignore[assignment]
        total=rewards, per_func=rewards[:, None], names=("r",), stats={}
    )
    trainer = SimpleNamespace(world_size=1, global_rank=0)
    module = SimpleNamespace(
        tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id, policy=None, name_or_path="",
        log=lambda *a, **k: None, log_dict=lambda *a, **k: None,
    )  # fmt: skip
    generation = GenerationOutput(completion_ids=[[5, 6]] * 6, finished=[True] * 6)
    batch = PromptBatch([[1, 2], [3]], {"prompt": ["a", "b"]})
    rollout = callback.score(trainer, module, batch, generation)  # type: ignore[arg-type]
    torch.testing.assert_close(rollout.advantages, expected_advantages(rewards, g, scale))
    torch.testing.assert_close(rollout.rewards, rewards)


class RecordingEngine:
    """A GenerationEngine that records weight syncs."""

    def __init__(self) -> None:
        self.syncs: list[bool] = []

    def generate(self, prompt_ids, sampling):  # pragma: no cover - not used here
        raise AssertionError("not expected")

    def sync_weights(self, policy, force: bool = False) -> None:
        self.syncs.append(force)

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...

    def close(self) -> None: ...


@pytest.mark.parametrize(("engine", "step", "expected"), [("vllm", 0, []), ("vllm", 4, [True]), ("hf", 4, [])])
def test_resume_forces_a_weight_sync(engine: str, step: int, expected: list[bool]) -> None:
    """A resumed run's engine started from the checkpoint on disk, not the restored policy: push it, forced."""
    callback = RolloutCallback(rewards=[RewardSpec("format")], engine=engine)  # type: ignore[arg-type]
    callback.engine = recording = RecordingEngine()
    module = SimpleNamespace(
        policy=None, tokenizer=None, pad_token_id=0, name_or_path="", log=lambda *a, **k: None
    )  # fmt: skip
    callback.on_train_start(SimpleNamespace(global_step=step), module)  # type: ignore[arg-type]
    assert recording.syncs == expected
