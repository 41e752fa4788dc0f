"""DAPO dynamic sampling: zero-signal groups are replaced from extra draws, the batch stays full, draws are bounded."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from openrs_pl.rewards.reward_set import RewardResult, RewardSpec
from openrs_pl.rollout.callback import RolloutCallback
from openrs_pl.rollout.dynamic_sampling import ScoredGroups, fill_informative, informative_groups, prompt_batches
from openrs_pl.rollout.types import GenerationOutput, PromptBatch, SamplingConfig

G = 2


def scored(prompts: list[int], rewards: list[float]) -> ScoredGroups:
    """Prompts k with G completions [k, j] each and the given rewards."""
    completions = [[k, j] for k in prompts for j in range(G)]
    return ScoredGroups(
        batch=PromptBatch([[k] for k in prompts], {"answer": [str(k) for k in prompts]}),
        generation=GenerationOutput(completion_ids=completions, finished=[True] * len(completions)),
        rewards=torch.tensor(rewards),
        per_func=torch.tensor(rewards)[:, None],
    )


def test_informative_groups() -> None:
    # Groups (1, 1) and (0, 0) agree -> dropped; (0, 1) and (0.5, 0.2) disagree -> kept.
    assert informative_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.2]), G) == [1, 3]


def test_fill_replaces_zero_signal_groups_from_extra_draws() -> None:
    # First batch: prompts 0..3, of which 1 and 3 are informative. Draw 1: prompts 10, 11 (only 11 informative).
    # Draw 2: prompts 20, 21 (both informative) -> 4 informative groups found: 1, 3, 11, 20; 21 is surplus.
    first = scored([0, 1, 2, 3], [1, 1, 0, 1, 0, 0, 1, 0])
    extra = iter([scored([10, 11], [0, 0, 1, 0]), scored([20, 21], [0, 1, 1, 0]), scored([30, 31], [0, 1, 0, 1])])
    batch, stats = fill_informative(first, lambda: next(extra), G, max_draws=5)
    assert batch.batch.prompt_ids == [[1], [3], [11], [20]] and batch.batch.columns["answer"] == ["1", "3", "11", "20"]
    assert batch.generation.completion_ids == [[k, j] for k in (1, 3, 11, 20) for j in range(G)]
    assert batch.rewards.tolist() == [0, 1, 1, 0, 1, 0, 0, 1]
    assert informative_groups(batch.rewards, G) == [0, 1, 2, 3]
    assert (stats.draws, stats.prompts_drawn, stats.informative, stats.filled_with_zero_signal) == (2, 8, 5, 0)


def test_retry_bound_holds_and_batch_is_topped_up() -> None:
    # Every draw is zero-signal: exactly max_draws draws, then the 3 missing groups are zero-signal fillers.
    first = scored([0, 1, 2, 3], [1, 1, 0, 1, 0, 0, 1, 1])
    calls = []

    def draw() -> ScoredGroups:
        calls.append(1)
        return scored([10 + len(calls)], [1, 1])

    batch, stats = fill_informative(first, draw, G, max_draws=2)
    assert len(calls) == 2 and stats.draws == 2 and stats.prompts_drawn == 6
    assert batch.num_groups == 4 and stats.filled_with_zero_signal == 3
    assert batch.batch.prompt_ids == [[1], [0], [2], [3]]  # informative first, then the first batch's spares
    # max_draws = 0 never draws.
    assert fill_informative(first, draw, G, max_draws=0)[1].draws == 0 and len(calls) == 2


def test_keep_drawing_is_asked_with_the_missing_count() -> None:
    # Another rank still misses groups: this full rank draws too (generation may be collective), stays full.
    first = scored([0], [0, 1])
    seen: list[int] = []
    batch, stats = fill_informative(first, lambda: scored([5], [0, 1]), G, 3, lambda m: seen.append(m) or True)
    assert seen == [0, 0, 0] and stats.draws == 3 and batch.batch.prompt_ids == [[0]]


def test_prompt_batches_is_endless_and_covers_the_shard() -> None:
    rows = [{"prompt_ids": [i]} for i in range(6)]
    stream = prompt_batches(rows, batch_size=2, rank=0, world_size=1, seed=0)
    epoch = [next(stream) for _ in range(3)]
    assert sorted(i for b in epoch for (i,) in b.prompt_ids) == list(range(6))
    assert len(next(stream)) == 2  # a second epoch follows


def fake_module(logged: dict[str, float], **extra: Any) -> SimpleNamespace:
    """The PolicySource the callback reads, plus the logging it calls."""
    return SimpleNamespace(
        policy=None,
        tokenizer=SimpleNamespace(batch_decode=lambda ids, **kw: ["" for _ in ids]),
        pad_token_id=0,
        name_or_path="fake",
        device=torch.device("cpu"),
        log_dict=lambda d, **kw: logged.update(d),
        log=lambda *a, **kw: None,
        **extra,
    )


def callback_with(reward_set: Any, **kwargs: Any) -> RolloutCallback:
    callback = RolloutCallback(rewards=[RewardSpec("format")], num_generations=G, seed=0, **kwargs)
    callback.reward_set = reward_set
    return callback


class ParityEngine:
    """Prompt k: G completions [k, j]; odd k get completions j = 0..G-1 (rewards differ), even k all j = 0."""

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> GenerationOutput:
        self.calls += 1
        ids = [[k, j if k % 2 else 0] for (k,) in prompt_ids for j in range(sampling.n)]
        return GenerationOutput(completion_ids=ids, finished=[True] * len(ids))


def parity_rewards(texts: list[str], prompts: list[str], columns: dict, completion_ids: list[list[int]]) -> Any:
    total = torch.tensor([float(ids[1] % 2) for ids in completion_ids])  # reward = parity of j
    return RewardResult(total=total, per_func=total[:, None], names=("parity",), stats={})


def test_rollout_callback_refills_the_batch() -> None:
    """Through RolloutCallback: even prompts (zero signal) are swapped for odd ones from the extra stream."""
    logged: dict[str, float] = {}
    module = fake_module(logged)
    rows = [{"prompt_ids": [k], "answer": str(k)} for k in range(40)]
    trainer = SimpleNamespace(world_size=1, global_rank=0, datamodule=SimpleNamespace(rows=rows))
    callback = callback_with(parity_rewards, dynamic_sampling=True, dynamic_sampling_max_draws=8)
    callback.engine = engine = ParityEngine()
    batch = PromptBatch([[0], [1], [2], [4]], {"answer": ["0", "1", "2", "4"]})  # one informative prompt of 4
    sampling = SamplingConfig(n=G, seed=0)
    rollout = callback.score(trainer, module, batch, engine.generate(batch.prompt_ids, sampling), sampling)
    prompts = rollout.prompt_ids[::G, -1].tolist()
    assert len(prompts) == 4 and prompts[0] == 1 and all(k % 2 for k in prompts)
    assert rollout.advantages.abs().min() > 0  # every group has signal
    assert logged["train/dynamic_sampling/draws"] == engine.calls - 1 >= 1
    assert logged["train/dynamic_sampling/filled_with_zero_signal"] == 0
    # Off: the batch is trained as drawn, zero-signal groups included.
    callback.dynamic_sampling = False
    rollout = callback.score(trainer, module, batch, engine.generate(batch.prompt_ids, sampling), sampling)
    assert rollout.prompt_ids[::G, -1].tolist() == [0, 1, 2, 4]


def test_rollout_callback_gdpo_advantages() -> None:
    """multi_objective_aggregation=normalize_then_sum: the callback's advantages are GDPO's, not the summed GRPO."""
    from openrs_pl.rollout.advantages import gdpo_advantages, group_advantages

    per_func = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 10.0], [1.0, 0.0]])  # two rewards of different scale
    weights = torch.tensor([1.0, 2.0])

    def two_rewards(texts, prompts, columns, completion_ids) -> RewardResult:
        return RewardResult(total=(per_func * weights).sum(1), per_func=per_func, names=("a", "b"), stats={})

    two_rewards.weights = weights  # type: ignore[attr-defined]
    module = fake_module({})
    trainer = SimpleNamespace(world_size=1, global_rank=0)
    generation = GenerationOutput(completion_ids=[[1], [2], [3], [4]], finished=[True] * 4)
    callback = callback_with(two_rewards, multi_objective_aggregation="normalize_then_sum")
    rollout = callback.score(trainer, module, PromptBatch([[5], [6]]), generation)
    torch.testing.assert_close(rollout.advantages, gdpo_advantages(per_func, weights, G))
    callback.multi_objective_aggregation = "sum_then_normalize"  # the default: plain group advantages of the total
    rollout = callback.score(trainer, module, PromptBatch([[5], [6]]), generation)
    torch.testing.assert_close(rollout.advantages, group_advantages((per_func * weights).sum(1), G))
    assert not torch.allclose(rollout.advantages, gdpo_advantages(per_func, weights, G))


def test_full_rank_keeps_drawing_while_another_rank_misses_groups() -> None:
    """Two ranks: this one is already full, the other (simulated by the reduce) misses one group in every round, so
    this rank joins every draw up to the bound (in the dedicated vLLM mode generation is a collective)."""
    logged: dict[str, float] = {}
    reduce_ops: list[str] = []

    def reduce(tensor: torch.Tensor, reduce_op: str) -> torch.Tensor:
        reduce_ops.append(reduce_op)
        return tensor + 1  # the other rank's missing count

    module = fake_module(logged)
    rows = [{"prompt_ids": [k], "answer": str(k)} for k in range(40)]
    trainer = SimpleNamespace(
        world_size=2, global_rank=0, datamodule=SimpleNamespace(rows=rows), strategy=SimpleNamespace(reduce=reduce)
    )
    callback = callback_with(parity_rewards, dynamic_sampling=True, dynamic_sampling_max_draws=3)
    callback.engine = engine = ParityEngine()
    batch = PromptBatch([[1], [3]], {"answer": ["1", "3"]})
    sampling = SamplingConfig(n=G, seed=0)
    rollout = callback.score(trainer, module, batch, engine.generate(batch.prompt_ids, sampling), sampling)
    assert logged["train/dynamic_sampling/draws"] == 3 and engine.calls == 4 and reduce_ops == ["sum"] * 3
    assert rollout.prompt_ids[::G, -1].tolist() == [1, 3]
