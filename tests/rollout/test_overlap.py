"""Overlapped rollouts: the background engine's ordering, the staleness bound, which weights sampled which step,
shutdown on error, resume, and the CLI switch.

The fit tests run real ``trainer.fit`` steps on the tiny model and compare each step's completions with an
:class:`HFEngine` on an independently loaded copy of the weights that should have sampled them.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from openrs_pl.data.datamodule import ProblemDataModule
from openrs_pl.grpo.config import GRPOConfig, OptimConfig
from openrs_pl.grpo.module import GRPOModule
from openrs_pl.rewards import RewardSpec
from openrs_pl.rollout.callback import RolloutCallback, reference_scorer
from openrs_pl.rollout.engine import AsyncGenerationEngine
from openrs_pl.rollout.hf_engine import HFEngine
from openrs_pl.rollout.overlap import OverlappedRollouts
from openrs_pl.rollout.thread_engine import ThreadEngine
from openrs_pl.rollout.types import GenerationOutput, PromptBatch, RolloutBatch, SamplingConfig

G = 6
MAX_TOKENS = 8
SEED = 42


def generation_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("openrs-generation")]


def perturbed(model: nn.Module, seed: int, scale: float = 0.2) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


# ------------------------------------------------------------------------------------------ ThreadEngine


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, list[list[int]]]:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [tokenizer(t, add_special_tokens=False).input_ids for t in ("What is 1 + 1?", "Say hi")]
    return tokenizer, prompts


def load(model_dir: Path, weights: dict[str, Tensor] | None = None) -> nn.Module:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if weights is not None:
        model.load_state_dict(weights)
    return model


def test_thread_engine_applies_requests_and_pushes_in_order(tiny_model_dir: Path, tiny) -> None:
    tokenizer, prompts = tiny
    sampling = SamplingConfig(n=3, temperature=1.0, max_tokens=MAX_TOKENS, seed=5)
    policy = load(tiny_model_dir)
    engine = ThreadEngine.on_copy(policy, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert isinstance(engine, AsyncGenerationEngine)
    try:
        before = engine.submit(prompts, sampling)
        perturbed(policy, seed=1)
        pushed = {k: v.clone() for k, v in policy.state_dict().items()}
        engine.sync_weights(policy)
        after = engine.submit(prompts, sampling)
        perturbed(policy, seed=2)  # the trainer moves on at once: the push must have been a copy
        assert engine.weights_version == 1
        outputs = [engine.collect(before), engine.collect(after)]
    finally:
        engine.close()
    for output, weights, version in zip(outputs, [None, pushed], [0, 1], strict=True):
        reference = HFEngine(
            load(tiny_model_dir, weights), tokenizer.eos_token_id, tokenizer.pad_token_id, logprobs=True
        )
        expected = reference.generate(prompts, sampling)
        assert output.weights_version == version
        assert output.completion_ids == expected.completion_ids
        assert output.logprobs is not None and expected.logprobs is not None
        for got, want in zip(output.logprobs, expected.logprobs, strict=True):
            torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-5, rtol=0)
    assert outputs[0].logprobs != outputs[1].logprobs, "the push changed the sampling weights"
    assert not generation_threads(), "close() stops the generation thread"


def test_thread_engine_reports_a_failed_push_with_the_next_request(tiny_model_dir: Path, tiny) -> None:
    tokenizer, prompts = tiny
    engine = ThreadEngine.on_copy(load(tiny_model_dir), tokenizer.eos_token_id, tokenizer.pad_token_id)
    try:
        engine.sync_weights(nn.Linear(2, 2))
        with pytest.raises(RuntimeError, match="weight push"):
            engine.generate(prompts, SamplingConfig(n=2, max_tokens=2, seed=0))
    finally:
        engine.close()


class SelfWeightedEngine:
    """A GenerationEngine double with weights of its own (as vLLM's): records each call, the thread it ran on and
    the torch threads that thread had; ``generate`` can be held back to show what waits for what."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.synced_from: list[float] = []
        self.release = threading.Event()
        self.release.set()
        self.closed = False

    def _record(self, call: str) -> None:
        self.calls.append((call, threading.current_thread().name, torch.get_num_threads()))

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> GenerationOutput:
        self.release.wait(timeout=10)
        self._record("generate")
        rows = len(prompt_ids) * sampling.n
        return GenerationOutput([[len(self.synced_from)]] * rows, [True] * rows)

    def sync_weights(self, policy: nn.Module, force: bool = False) -> None:
        self._record("sync")
        if not isinstance(policy, nn.Linear):
            raise ValueError("not this engine's architecture")
        self.synced_from.append(float(policy.weight.sum()))  # read from the live policy when the push runs

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...

    def close(self) -> None:
        self.closed = True


def test_thread_engine_around_an_engine_with_its_own_weights_syncs_in_order_on_its_thread() -> None:
    inner = SelfWeightedEngine()
    engine = ThreadEngine.around(inner, num_threads=1)
    policy = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        policy.weight.fill_(1.0)
    caller_threads = torch.get_num_threads()
    try:
        inner.release.clear()
        before = engine.submit([[1]], SamplingConfig(n=2))  # held in the worker
        pushed = threading.Thread(target=engine.sync_weights, args=(policy,))
        pushed.start()
        pushed.join(timeout=0.5)
        assert pushed.is_alive(), "a push waits for the request in flight: the engine is used by one thread"
        inner.release.set()
        pushed.join(timeout=10)
        with torch.no_grad():
            policy.weight.fill_(2.0)  # after the push returned: the engine must not see this
        after = engine.submit([[1]], SamplingConfig(n=2))
        outputs = [engine.collect(before), engine.collect(after)]
    finally:
        engine.close()
    assert [o.weights_version for o in outputs] == [0, 1] and engine.weights_version == 1
    assert [o.completion_ids[0] for o in outputs] == [[0], [1]]
    assert inner.synced_from == [4.0], "synced from the live policy when the push ran, not later"
    assert [c[0] for c in inner.calls] == ["generate", "sync", "generate"]
    assert {c[1].split("_")[0] for c in inner.calls} == {"openrs-generation"}, inner.calls
    assert {c[2] for c in inner.calls} == {1}, "the worker thread runs with its own torch thread count"
    assert torch.get_num_threads() == caller_threads, "the caller's thread count is left alone"
    assert inner.closed and not generation_threads()


def test_thread_engine_scores_each_request_on_its_thread_after_sampling() -> None:
    scored: list[tuple[list[list[int]], list[list[int]], str]] = []

    def scorer(prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[list[float]]:
        scored.append((prompt_ids, completion_ids, threading.current_thread().name))
        time.sleep(0.05)
        return [[-float(p[0])] * len(c) for p, c in zip(prompt_ids, completion_ids, strict=True)]

    class Timed(SelfWeightedEngine):
        def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> GenerationOutput:
            rows = len(prompt_ids) * sampling.n
            return GenerationOutput([[7, 8][: 1 + r % 2] for r in range(rows)], [True] * rows, generation_s=0.01)

    engine = ThreadEngine.around(Timed(), scorer=scorer)
    try:
        out = engine.generate([[1], [2, 3]], SamplingConfig(n=2))
    finally:
        engine.close()
    # One call per request, on the worker, with completion i paired with its own prompt (i // n).
    ((prompts, completion_ids, thread),) = scored
    assert prompts == [[1], [1], [2, 3], [2, 3]] and completion_ids == out.completion_ids
    assert thread.startswith("openrs-generation")
    assert out.ref_logprobs == [[-1.0], [-1.0, -1.0], [-2.0], [-2.0, -2.0]]
    assert out.generation_s is not None and out.generation_s >= 0.06, "the scoring is the generator's busy time too"


def test_thread_engine_around_counts_only_the_pushes_that_reach_the_engine() -> None:
    inner = SelfWeightedEngine()
    engine = ThreadEngine.around(inner, sync_every=2)
    policy = nn.Linear(2, 2, bias=False)
    try:
        versions = []
        for _ in range(3):  # calls 1 and 3 are skipped, call 2 pushes
            engine.sync_weights(policy)
            versions.append(engine.generate([[1]], SamplingConfig(n=2)).weights_version)
        engine.sync_weights(policy, force=True)  # a forced call always pushes
        versions.append(engine.generate([[1]], SamplingConfig(n=2)).weights_version)
    finally:
        engine.close()
    assert versions == [0, 1, 1, 2] and engine.weights_version == 2
    assert len(inner.synced_from) == 2, "the engine received exactly the counted pushes"


def test_thread_engine_around_an_engine_raises_a_failed_push_to_the_caller() -> None:
    engine = ThreadEngine.around(SelfWeightedEngine())
    try:
        with pytest.raises(ValueError, match="architecture"):
            engine.sync_weights(nn.Conv1d(1, 1, 1))
        assert engine.generate([[1]], SamplingConfig(n=2)).completion_ids == [[0], [0]]
    finally:
        engine.close()


# ------------------------------------------------------------------------------- staleness bookkeeping


class ManualEngine:
    """An AsyncGenerationEngine double whose weight pushes take effect only when ``apply`` says so (an engine that
    lags behind), and whose completions name the seed that requested them."""

    def __init__(self, apply: bool = True) -> None:
        self.apply = apply
        self.pushes = 0
        self.applied = 0
        self.requests: dict[int, tuple[int, SamplingConfig, int]] = {}

    @property
    def weights_version(self) -> int:
        return self.pushes

    def submit(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> int:
        ticket = len(self.requests) + 1000 * self.pushes
        self.requests[ticket] = (len(prompt_ids), sampling, self.applied)
        return ticket

    def collect(self, ticket: int) -> GenerationOutput:
        prompts, sampling, version = self.requests.pop(ticket)
        rows = prompts * sampling.n
        return GenerationOutput([[sampling.seed or 0]] * rows, [True] * rows, weights_version=version)

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> GenerationOutput:
        self.applied = self.pushes  # a synchronous request waits for every push
        return self.collect(self.submit(prompt_ids, sampling))

    def sync_weights(self, policy: nn.Module, force: bool = False) -> None:
        self.pushes += 1
        if self.apply:
            self.applied = self.pushes

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...

    def close(self) -> None: ...


def seeded(seed: int) -> SamplingConfig:
    return SamplingConfig(n=2, seed=seed)


PROMPTS = [[1, 2], [3]]


def test_prefetched_completions_are_one_update_old_and_used() -> None:
    overlap = OverlappedRollouts(ManualEngine(), max_staleness=1)
    overlap.prefetch(1, PROMPTS, seeded(101))  # requested before step 0's update is pushed
    overlap.push(nn.Linear(1, 1), policy_version=1)
    output, staleness = overlap.take(1, PROMPTS, seeded(999), policy_version=1)
    assert output.completion_ids[0] == [101] and staleness == 1 and overlap.discarded == 0


def test_completions_staler_than_the_bound_are_generated_again() -> None:
    engine = ManualEngine(apply=False)  # pushes are queued but the engine keeps sampling with old weights
    overlap = OverlappedRollouts(engine, max_staleness=1)
    overlap.push(nn.Linear(1, 1), policy_version=1)
    overlap.prefetch(2, PROMPTS, seeded(102))  # sampled by version 0
    overlap.push(nn.Linear(1, 1), policy_version=2)
    output, staleness = overlap.take(2, PROMPTS, seeded(202), policy_version=2)
    assert output.completion_ids[0] == [202], "2 updates old > max_staleness 1: regenerated with this step's seed"
    assert staleness == 0 and overlap.discarded == 1


def test_max_staleness_zero_regenerates_every_prefetch() -> None:
    overlap = OverlappedRollouts(ManualEngine(), max_staleness=0)
    overlap.prefetch(1, PROMPTS, seeded(101))
    overlap.push(nn.Linear(1, 1), policy_version=1)
    output, staleness = overlap.take(1, PROMPTS, seeded(201), policy_version=1)
    assert (output.completion_ids[0], staleness, overlap.discarded) == ([201], 0, 1)


def test_prefetch_for_other_prompts_is_not_used() -> None:
    overlap = OverlappedRollouts(ManualEngine(), max_staleness=1)
    overlap.prefetch(1, PROMPTS, seeded(101))
    output, _ = overlap.take(1, [[7]], seeded(201), policy_version=1)
    assert output.completion_ids[0] == [201] and overlap.discarded == 1


def test_the_request_in_flight_survives_a_checkpoint() -> None:
    overlap = OverlappedRollouts(ManualEngine(), max_staleness=1, policy_version=4)
    overlap.prefetch(5, PROMPTS, seeded(105))
    overlap.push(nn.Linear(1, 1), policy_version=5)
    state = json.loads(json.dumps(overlap.state_dict()))  # plain data: torch.save or any serialiser keeps it
    resumed = OverlappedRollouts(ManualEngine(), max_staleness=1, policy_version=5)  # a new process, a new engine
    resumed.load_state_dict(state)
    output, staleness = resumed.take(5, PROMPTS, seeded(999), policy_version=5)
    assert output.completion_ids[0] == [105] and staleness == 1


# -------------------------------------------------------------------------------------------- real fits


class Recorder(L.Callback):
    """After the rollout callback: each step's starting weights, prompts and rollout; optionally fails a step."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at
        self.weights: list[dict[str, Tensor]] = []
        self.prompts: list[list[list[int]]] = []
        self.rollouts: list[RolloutBatch] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: PromptBatch, batch_idx: int) -> None:
        if trainer.global_step == self.fail_at:
            raise RuntimeError("injected failure")
        assert batch.rollout is not None, "the rollout callback runs first"
        self.weights.append({k: v.detach().clone() for k, v in pl_module.policy.state_dict().items()})
        self.prompts.append(batch.prompt_ids)
        self.rollouts.append(batch.rollout)


@pytest.fixture(scope="module")
def problems(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("overlap") / "train.jsonl"
    rows = [{"problem": f"What is {a} + {a + 1}?", "answer": str(2 * a + 1)} for a in range(16)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def fit(
    model_dir: Path, problems: Path, root: Path, steps: int, *, overlap: bool = True, max_staleness: int = 1,
    fail_at: int | None = None, ckpt_path: str | None = None, score_reference: bool = False,
    packing: bool = False, extra: tuple[L.Callback, ...] = (),
) -> tuple[Recorder, RolloutCallback, GRPOModule]:  # fmt: skip
    module = GRPOModule(
        str(model_dir), grpo=GRPOConfig(micro_batch_size=12, packing=packing),
        optim=OptimConfig(lr=1e-3, warmup_ratio=0.0),
        temperature=0.7, max_completion_length=MAX_TOKENS, torch_dtype="float32",
    )  # fmt: skip
    data = ProblemDataModule(str(problems), tokenizer=str(model_dir), prompts_per_step=2, lookahead=overlap)
    rewards = [RewardSpec("format"), RewardSpec("cosine", kwargs={"max_len": MAX_TOKENS, "gold_field": "answer"})]
    rollout = RolloutCallback(
        rewards, num_generations=G, max_completion_length=MAX_TOKENS, seed=SEED, overlap=overlap,
        max_staleness=max_staleness, score_reference=score_reference,
    )  # fmt: skip
    recorder = Recorder(fail_at)
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=root, every_n_train_steps=1, save_top_k=-1)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[rollout, recorder, checkpoints, *extra], default_root_dir=root,
    )  # fmt: skip
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=False)
    return recorder, rollout, module


def completions(rollout: RolloutBatch) -> list[list[int]]:
    return [
        row[: int(n)].tolist() for row, n in zip(rollout.completion_ids, rollout.completion_mask.sum(1), strict=True)
    ]


@pytest.mark.slow
def test_each_step_trains_on_completions_sampled_by_the_previous_steps_weights(
    tiny_model_dir: Path, problems: Path, tmp_path: Path
) -> None:
    recorder, callback, _ = fit(tiny_model_dir, problems, tmp_path, steps=4)
    assert [r.staleness.tolist() for r in recorder.rollouts] == [[s] * 2 * G for s in (0, 1, 1, 1)]  # type: ignore[union-attr]
    assert callback.policy_version == 4
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for step, rollout in enumerate(recorder.rollouts):
        sampling = SamplingConfig(n=G, temperature=0.7, max_tokens=MAX_TOKENS, seed=SEED + step)
        # Step t's completions were sampled by the weights step t-1 started with (step 0's: the checkpoint's).
        sampler = load(tiny_model_dir, recorder.weights[max(step - 1, 0)])
        expected = HFEngine(sampler, tokenizer.eos_token_id, tokenizer.pad_token_id, logprobs=True)
        out = expected.generate(recorder.prompts[step], sampling)
        assert completions(rollout) == out.completion_ids, f"step {step}"
        assert rollout.sampler_logprobs is not None, "the sampler's log-probs reach the module (IS correction)"
        for row, lps in enumerate(out.logprobs or []):
            torch.testing.assert_close(rollout.sampler_logprobs[row, : len(lps)], torch.tensor(lps), atol=1e-5, rtol=0)
    # The weights did move, so "sampled by the previous step's weights" is a real distinction: step 2's own
    # starting weights sample other completions, or the same ones with other log-probs.
    own_weights = load(tiny_model_dir, recorder.weights[2])
    own = HFEngine(own_weights, tokenizer.eos_token_id, tokenizer.pad_token_id, logprobs=True).generate(
        recorder.prompts[2], SamplingConfig(n=G, temperature=0.7, max_tokens=MAX_TOKENS, seed=SEED + 2)
    )
    used = recorder.rollouts[2]
    assert own.completion_ids != completions(used) or not torch.allclose(
        torch.tensor([lp for row in own.logprobs or [] for lp in row]),
        used.sampler_logprobs[used.completion_mask.bool()],  # type: ignore[index]
    )
    assert not generation_threads(), "teardown stopped the generation thread"


class ReferenceCalls(L.Callback):
    """Records the thread of every forward pass of the module's frozen reference."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        pl_module.reference.register_forward_hook(lambda *_: self.threads.append(threading.current_thread().name))


@pytest.mark.slow
@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_the_generation_thread_scores_the_reference_and_the_step_skips_its_pass(
    tiny_model_dir: Path, problems: Path, tmp_path: Path, packing: bool
) -> None:
    calls, scored_calls = ReferenceCalls(), ReferenceCalls()
    plain, _, plain_module = fit(tiny_model_dir, problems, tmp_path / "plain", 3, packing=packing, extra=(calls,))
    scored, _, module = fit(
        tiny_model_dir, problems, tmp_path / "scored", 3, score_reference=True, packing=packing, extra=(scored_calls,)
    )
    # Without the option the training step scores the reference; with it only the generation thread does.
    assert calls.threads and set(calls.threads) == {"MainThread"}
    assert len(scored_calls.threads) >= 3 and all(t.startswith("openrs-generation") for t in scored_calls.threads)
    reference = plain_module.reference
    assert reference is not None
    for a, b in zip(plain.rollouts, scored.rollouts, strict=True):
        assert completions(a) == completions(b)  # same seeds, same weights: the same samples
        assert a.ref_logprobs is None and b.ref_logprobs is not None
        # What the thread attached is what the training step's own pass gives for these rows.
        with torch.no_grad():
            expected = plain_module._logprobs(reference, b)  # [N, L]
        mask = b.completion_mask.bool()
        assert expected[mask].abs().min() > 0
        torch.testing.assert_close(b.ref_logprobs[mask], expected[mask], atol=1e-5, rtol=0)
    # The KL term used those values: both runs end with the same weights.
    for name, value in plain_module.policy.state_dict().items():
        torch.testing.assert_close(module.policy.state_dict()[name], value, atol=1e-6, rtol=0, msg=name)


@pytest.mark.slow
def test_max_staleness_zero_trains_on_policy(tiny_model_dir: Path, problems: Path, tmp_path: Path) -> None:
    recorder, callback, _ = fit(tiny_model_dir, problems, tmp_path, steps=3, max_staleness=0)
    assert [r.staleness.tolist() for r in recorder.rollouts] == [[0] * 2 * G] * 3  # type: ignore[union-attr]
    assert callback.overlapped is None  # torn down
    sync, _, _ = fit(tiny_model_dir, problems, tmp_path / "sync", steps=3, overlap=False)
    for on_policy, reference in zip(recorder.rollouts, sync.rollouts, strict=True):
        assert completions(on_policy) == completions(reference), "regenerated = what the synchronous run samples"


@pytest.mark.slow
def test_an_error_mid_run_closes_the_engine(tiny_model_dir: Path, problems: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="injected failure"):
        fit(tiny_model_dir, problems, tmp_path, steps=4, fail_at=2)  # step 3's completions are in flight
    assert not generation_threads()


@pytest.mark.slow
def test_resume_trains_on_exactly_what_the_uninterrupted_run_did(
    tiny_model_dir: Path, problems: Path, tmp_path: Path
) -> None:
    full, _, full_module = fit(tiny_model_dir, problems, tmp_path / "full", steps=4)
    ckpt = tmp_path / "full" / "epoch=0-step=2.ckpt"  # what a run killed during step 3 leaves behind
    assert ckpt.exists()
    resumed, callback, resumed_module = fit(tiny_model_dir, problems, tmp_path / "resumed", 4, ckpt_path=str(ckpt))
    assert len(resumed.rollouts) == 2 and callback.policy_version == 4
    for a, b in zip(full.rollouts[2:], resumed.rollouts, strict=True):
        assert completions(a) == completions(b)
        assert a.staleness.tolist() == b.staleness.tolist()  # type: ignore[union-attr]
        torch.testing.assert_close(a.sampler_logprobs, b.sampler_logprobs, atol=0, rtol=0)
    for name, value in full_module.policy.state_dict().items():
        torch.testing.assert_close(resumed_module.policy.state_dict()[name], value, atol=1e-6, rtol=0, msg=name)


def test_cli_overlap_reaches_the_callback_and_the_datamodule(tiny_model_dir: Path) -> None:
    from openrs_pl.cli import OpenRSCLI

    class ParseOnly(OpenRSCLI):
        def instantiate_classes(self) -> None:
            pass

    base = ["--config", "configs/tiny_cpu.yaml", "--model.name_or_path", str(tiny_model_dir)]
    for flag, expected in ((["--rollout.overlap", "true", "--rollout.max_staleness", "2"], True), ([], False)):
        cli = ParseOnly(GRPOModule, ProblemDataModule, args=[*base, *flag], run=False)
        init = cli.parser.instantiate_classes(cli.config)
        assert init.rollout.overlap is expected and init.data.lookahead is expected
        assert init.rollout.max_staleness == (2 if expected else 1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"overlap": False}, "needs rollout.overlap with rollout.engine hf or vllm \\(got overlap=False"),
        ({"overlap": True, "engine": "process"}, "got overlap=True, engine='process'"),
    ],
)
def test_score_reference_outside_a_generation_thread_is_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RolloutCallback([RewardSpec("format")], score_reference=True, **options)


def test_score_reference_without_a_reference_model_says_so(tiny_model_dir: Path) -> None:
    module = GRPOModule(str(tiny_model_dir), grpo=GRPOConfig(beta=0.0))
    module.load_models()
    with pytest.raises(ValueError, match="GRPOModule has no frozen reference to score with .*beta > 0"):
        reference_scorer(module)


@pytest.mark.parametrize(
    ("engine", "message"),
    [  # rank > 0 of a dedicated generator: it has none
        ("process", "set --rollout.process.mode per_rank"),
        ("vllm", "set --rollout.vllm.mode colocate"),
    ],
)
def test_overlap_on_a_rank_without_a_generator_says_what_to_set(engine: str, message: str) -> None:
    callback = RolloutCallback([RewardSpec("format")], engine=engine, overlap=True)  # type: ignore[arg-type]
    callback.engine = None
    with pytest.raises(ValueError, match=re.escape(message)):
        callback._start_overlap()
