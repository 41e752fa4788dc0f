"""The callback that drives rollouts: generate, score, compute advantages, hand the batch to the module, sync.

The rollout side owns everything it uses: the engine, the sampling settings, the reward functions and the
advantage scaling. Per optimizer step on every rank: take the DataModule's prompts from the
:class:`~openrs_pl.rollout.types.PromptBatch`, ask the engine for G completions each, decode them, score them with
the reward set (which also gets the batch's dataset columns), turn rewards into group-relative advantages and attach
the padded :class:`~openrs_pl.rollout.types.RolloutBatch` to the batch (``batch.rollout``) for ``training_step``.
After the step, push the new policy weights into the engine (every ``sync_every`` steps; the HF engine samples from
the policy itself and ignores the call). The only thing read from the module is a
:class:`~openrs_pl.rollout.types.PolicySource`. Groups never straddle ranks: each rank's prompts are expanded to
their G completions locally, and in the dedicated vLLM mode rank 0 generates for everyone and sends each rank back
exactly its own groups.

With ``overlap`` on, the engine generates the next step's completions while the current step trains (see
:mod:`openrs_pl.rollout.overlap`): the DataModule shows each batch the next one's prompts, the callback submits them
before training, pushes the weights after every step, and tells the module how stale each completion is.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from typing import Any, Literal

import lightning as L
import torch

from openrs_pl.rewards import RewardSet, RewardSpec, validate_reward_specs
from openrs_pl.rollout.advantages import MultiObjectiveAggregation, ScaleRewards, gdpo_advantages, group_advantages
from openrs_pl.rollout.assemble import assemble_rollout
from openrs_pl.rollout.dynamic_sampling import ScoredGroups, fill_informative, prompt_batches
from openrs_pl.rollout.engine import AsyncGenerationEngine, GenerationEngine
from openrs_pl.rollout.hf_engine import HFEngine
from openrs_pl.rollout.overlap import OverlappedRollouts
from openrs_pl.rollout.process_engine import ProcessEngine, ProcessEngineConfig
from openrs_pl.rollout.thread_engine import ThreadEngine
from openrs_pl.rollout.types import (
    GenerationOutput,
    PolicySource,
    PromptBatch,
    ReferenceScorer,
    ReferenceSource,
    RolloutBatch,
    SamplingConfig,
    per_completion,
)
from openrs_pl.rollout.vllm_config import VLLMConfig

EngineName = Literal["hf", "vllm", "process"]


def policy_source(pl_module: L.LightningModule) -> PolicySource:
    """The module as the typed :class:`PolicySource` the rollout side reads; a clear error for any other module."""
    if not isinstance(pl_module, PolicySource):
        raise TypeError(
            f"{type(pl_module).__name__} does not expose policy, tokenizer, pad_token_id and name_or_path "
            "(openrs_pl.rollout.types.PolicySource), which RolloutCallback needs"
        )
    return pl_module


def reference_scorer(pl_module: L.LightningModule) -> ReferenceScorer:
    """The module's scoring under its frozen reference (``rollout.score_reference``), or why there is none."""
    scorer = pl_module.reference_scorer() if isinstance(pl_module, ReferenceSource) else None
    if scorer is None:
        raise ValueError(
            f"rollout.score_reference: {type(pl_module).__name__} has no frozen reference to score with "
            "(it needs model.grpo.beta > 0)"
        )
    return scorer


class RolloutCallback(L.Callback):
    """Generates and scores each step's rollouts and keeps the engine's weights in sync with the policy.

    Args:
        rewards: reward functions with weights (recipe: format 1.0 + accuracy or cosine 2.0).
        num_generations: completions sampled per prompt (the group size G, at least 2).
        temperature: sampling temperature; the module scores log-probs at the same temperature (linked by the CLI).
        top_p: nucleus sampling mass; 1.0 = off (the recipe sets none).
        top_k: top-k sampling; 0 = off.
        max_completion_length: completion length limit in tokens (also dr_grpo's constant, linked by the CLI).
        scale_rewards: divide advantages by the group std (GRPO), the batch std (all ranks), or not at all
            (Dr. GRPO).
        engine: ``hf`` (``model.generate`` on the policy; nothing to sync), ``vllm``, or ``process`` (a generator
            process holding a copy of the policy, weights pushed over torch.distributed).
        vllm: vLLM engine settings (mode dedicated|colocate, device, memory, max_model_len, dtype, sync_every); with
            ``engine: process`` and ``process.generator: vllm`` the generator process's vLLM is sized by them too
            (placement and sync_every are then ``process``'s).
        process: generator-process settings (generator hf|vllm, mode dedicated|per_rank, device, backend,
            sync_every).
        hf_batch_size: prompts per ``generate`` call for the HF engine (None = the whole batch).
        seed: base sampling seed; each step and rank derive their own from it, so runs are reproducible.
        multi_objective_aggregation: sum_then_normalize: weighted reward sum, then group advantages (GRPO, the
            recipe); normalize_then_sum: normalise each reward in its group, sum, renormalise over the batch (GDPO,
            arXiv 2601.05242; TRL 1.16's option of the same name).
        dynamic_sampling: DAPO dynamic sampling (arXiv 2503.14476): drop groups whose rewards all agree and draw
            more prompts until the batch is full again. Off in the recipe.
        dynamic_sampling_max_draws: extra prompt batches dynamic sampling may draw per step; when they run out the
            batch is topped up with zero-signal groups.
        overlap: generate step t+1's completions while step t trains (the hf engine then samples in a background
            thread from its own copy of the policy; the vllm engine is driven from a background thread; the process
            engine generates in its process). Completions become off-policy by one update; the sampler's log-probs
            are kept and the module applies truncated importance sampling to them. Off in the recipe.
        max_staleness: with ``overlap``, the most policy updates a trained-on completion may lag behind; staler
            ones are generated again with the current weights.
        generation_threads: with ``overlap`` and the hf or vllm engine, the torch threads (CPU cores) of the
            background generation thread; None: as many as the trainer's. (The process engine's is
            ``process.num_threads``.)
        score_reference: with ``overlap`` and the hf or vllm engine, the generation thread also scores each batch
            under the frozen reference (the KL term's log-probs, ``model.grpo.beta > 0``) while the trainer trains,
            so the training step skips its reference forward. Same values (up to float noise; under mixed
            precision the thread runs outside the trainer's autocast); off in the recipe.
    """

    def __init__(
        self,
        rewards: list[RewardSpec],
        num_generations: int = 6,
        temperature: float = 0.7,
        top_p: float = 1.0,
        top_k: int = 0,
        max_completion_length: int = 3584,
        scale_rewards: ScaleRewards = "group",
        engine: EngineName = "hf",
        vllm: VLLMConfig = VLLMConfig(),
        process: ProcessEngineConfig = ProcessEngineConfig(),
        hf_batch_size: int | None = None,
        seed: int = 42,
        multi_objective_aggregation: MultiObjectiveAggregation = "sum_then_normalize",
        dynamic_sampling: bool = False,
        dynamic_sampling_max_draws: int = 4,
        overlap: bool = False,
        max_staleness: int = 1,
        generation_threads: int | None = None,
        score_reference: bool = False,
    ) -> None:
        super().__init__()
        # Every config error surfaces here, before the (possibly multi-GB) weights are loaded.
        if num_generations < 2:
            raise ValueError(f"rollout.num_generations must be >= 2 (a group needs a baseline), got {num_generations}")
        if temperature <= 0:
            raise ValueError(f"rollout.temperature must be > 0 for GRPO sampling, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"rollout.top_p must be in (0, 1], got {top_p}")
        if max_completion_length < 1:
            raise ValueError(f"rollout.max_completion_length must be >= 1, got {max_completion_length}")
        if not rewards:
            raise ValueError("rollout.rewards is empty: GRPO needs at least one reward function")
        validate_reward_specs(rewards)
        if max_staleness < 0:
            raise ValueError(f"rollout.max_staleness must be >= 0, got {max_staleness}")
        if generation_threads is not None and generation_threads < 1:
            raise ValueError(f"rollout.generation_threads must be >= 1, got {generation_threads}")
        if score_reference and not (overlap and engine in ("hf", "vllm")):
            raise ValueError(
                "rollout.score_reference scores in the background generation thread: it needs rollout.overlap with "
                f"rollout.engine hf or vllm (got overlap={overlap}, engine={engine!r})"
            )
        if dynamic_sampling_max_draws < 0:
            raise ValueError(f"rollout.dynamic_sampling_max_draws must be >= 0, got {dynamic_sampling_max_draws}")
        self.multi_objective_aggregation = multi_objective_aggregation
        self.dynamic_sampling = dynamic_sampling
        self.dynamic_sampling_max_draws = dynamic_sampling_max_draws
        self._extra_prompts: Iterator[PromptBatch] | None = None  # dynamic sampling's own prompt stream
        self.reward_set = RewardSet(rewards)
        self.sampling = SamplingConfig(
            n=num_generations, temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_completion_length
        )
        self.scale_rewards: ScaleRewards = scale_rewards
        self.engine_name = engine
        self.vllm_config = vllm
        self.process_config = process
        self.hf_batch_size = hf_batch_size
        self.seed = seed
        self.engine: GenerationEngine | None = None
        self.overlap = overlap
        self.max_staleness = max_staleness
        self.generation_threads = generation_threads
        self.score_reference = score_reference
        self.overlapped: OverlappedRollouts | None = None
        self.policy_version = 0  # training steps the policy has taken (overlap mode's clock, checkpointed)
        self._restored_prefetch: dict[str, Any] = {}

    @property
    def num_generations(self) -> int:
        return self.sampling.n

    # ------------------------------------------------------------------------------------------ lifecycle
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the module's setup (the policy exists) and after the strategy moved it to its device.
        if self.engine is not None:
            return
        source = policy_source(pl_module)
        scorer = reference_scorer(pl_module) if self.score_reference else None
        if self.engine_name == "hf" and self.overlap:
            self.engine = ThreadEngine.for_policy(source, self.hf_batch_size, self.generation_threads, scorer)
        elif self.engine_name == "hf":
            self.engine = HFEngine.for_policy(source, batch_size=self.hf_batch_size)
        elif self.engine_name == "process":
            # Dedicated: rank 0 starts the one generator; per_rank: every rank starts its own.
            dedicated = self.process_config.mode == "dedicated" and trainer.global_rank != 0
            seed = self.seed + trainer.global_rank  # the vLLM generator's default seed, as the vLLM engine's
            self.engine = (
                None if dedicated else ProcessEngine.for_policy(source, self.process_config, self.vllm_config, seed)
            )
        else:
            self.engine = self._build_vllm_engine(trainer, source)
            if self.overlap and self.engine is not None:
                threads, sync_every = self.generation_threads, self.vllm_config.sync_every
                self.engine = ThreadEngine.around(self.engine, threads, sync_every, scorer)
        if self.overlap:
            self._start_overlap()

    def _start_overlap(self) -> None:
        if self.engine is None:  # a dedicated generator lives on rank 0 only
            fix = "--rollout.process.mode per_rank" if self.engine_name == "process" else "--rollout.vllm.mode colocate"
            raise ValueError(f"rollout.overlap with several ranks needs a generator per rank: set {fix}")
        if not isinstance(self.engine, AsyncGenerationEngine):
            raise TypeError(f"rollout.overlap needs an engine that generates in the background, not {self.engine!r}")
        self.overlapped = OverlappedRollouts(self.engine, self.max_staleness, self.policy_version)
        self.overlapped.load_state_dict(self._restored_prefetch)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Resuming from a checkpoint (global_step is restored only now): the engine started from the base weights.
        # Its time is not logged: Lightning refuses on_step logging in on_train_start.
        if trainer.global_step > 0:
            self._sync(pl_module, force=True, log=False)

    def _build_vllm_engine(self, trainer: L.Trainer, source: PolicySource) -> GenerationEngine | None:
        from openrs_pl.rollout.vllm_engine import VLLMEngine

        # Dedicated mode: one engine, in rank 0's process, on its own device; the other ranks have none.
        if self.vllm_config.mode == "dedicated" and trainer.global_rank != 0:
            return None
        return VLLMEngine(
            source.name_or_path, self.vllm_config, seed=self.seed + trainer.global_rank, local_rank=trainer.local_rank
        )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # vLLM's own shutdown would destroy the trainer's process group if left to the interpreter's exit.
        if self.engine is not None:
            self.engine.close()
        self.engine = None
        self.overlapped = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # Lightning skips teardown after an error: stop the engine here (a generator process must not outlive the
        # failed fit; a generation thread would keep the interpreter from exiting until its queue ran dry).
        self.teardown(trainer, pl_module, "fit")

    def state_dict(self) -> dict[str, Any]:
        if not self.overlap:
            return {}
        prefetch = self.overlapped.state_dict() if self.overlapped is not None else self._restored_prefetch
        return {"policy_version": self.policy_version, "prefetch": prefetch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.overlap and state_dict:
            self.policy_version = state_dict["policy_version"]
            self._restored_prefetch = state_dict["prefetch"]

    # ------------------------------------------------------------------------------------------- per step
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: PromptBatch, batch_idx: int
    ) -> None:
        if not isinstance(batch, PromptBatch):
            raise TypeError(
                f"RolloutCallback needs batches of openrs_pl.rollout.types.PromptBatch (as ProblemDataModule serves "
                f"them), got {type(batch).__name__}"
            )
        start = time.perf_counter()
        if self.overlap:
            if batch.next_prompt_ids is None:
                raise ValueError(
                    "rollout.overlap needs the next batch's prompts: set data.lookahead (the CLI links it)"
                )
            generation, sampling, staleness = self._overlapped_generation(
                trainer, batch.prompt_ids, batch.next_prompt_ids
            )
        else:
            sampling = self._sampling(trainer, trainer.global_step)
            generation, staleness = self.generate(trainer, batch.prompt_ids, sampling), 0
        if self.engine is not None:
            self.engine.sleep()  # colocate + sleep mode: free the engine's memory for training
        pl_module.log("train/time/generation", time.perf_counter() - start, on_step=True, on_epoch=False)
        rollout = self.score(trainer, pl_module, batch, generation, sampling)
        if self.overlap:  # refilled groups (dynamic sampling) are counted as stale as the batch: IS weight ~1
            pl_module.log("train/rollout/staleness", float(staleness), on_step=True, on_epoch=False)
            rollout = replace(rollout, staleness=torch.full((rollout.num_completions,), staleness))
        batch.rollout = rollout

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.overlap:
            self.policy_version += 1
        self._sync(pl_module)  # the engine applies its own `sync_every`; the HF engine ignores it

    def _sampling(self, trainer: L.Trainer, step: int) -> SamplingConfig:
        """The sampling settings with this step's and rank's own seed."""
        seed = self.seed + step * max(trainer.world_size, 1) + trainer.global_rank
        return replace(self.sampling, seed=seed)

    def _overlapped_generation(
        self, trainer: L.Trainer, prompt_ids: list[list[int]], next_prompts: list[list[int]]
    ) -> tuple[GenerationOutput, SamplingConfig, int]:
        """This step's completions (requested a step ago) and their staleness; the next step's requested now
        (``next_prompts`` is empty after an epoch's last batch: the next epoch's order is not drawn yet)."""
        assert self.overlapped is not None, "overlap not started: RolloutCallback.on_fit_start did not run"
        step = self.policy_version
        sampling = self._sampling(trainer, step)
        generation, staleness = self.overlapped.take(step, prompt_ids, sampling, policy_version=step)
        last_step = 0 < trainer.max_steps <= trainer.global_step + 1
        if next_prompts and not last_step:
            self.overlapped.prefetch(step + 1, next_prompts, self._sampling(trainer, step + 1))
        return generation, sampling, staleness

    def generate(self, trainer: L.Trainer, prompt_ids: list[list[int]], sampling: SamplingConfig) -> GenerationOutput:
        """Completions for this rank's prompts (in the dedicated vLLM mode, via rank 0). Every rank must call it."""
        if (self.engine_name, self._engine_mode) in (("vllm", "dedicated"), ("process", "dedicated")):
            from openrs_pl.rollout.dispatch import generate_on_rank_zero

            return generate_on_rank_zero(self.engine, prompt_ids, sampling)
        assert self.engine is not None, "engine not built: RolloutCallback.on_fit_start did not run"
        return self.engine.generate(prompt_ids, sampling)

    @property
    def _engine_mode(self) -> str | None:
        return {"vllm": self.vllm_config.mode, "process": self.process_config.mode}.get(self.engine_name)

    def score(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: PromptBatch,
        generation: GenerationOutput,
        sampling: SamplingConfig | None = None,
    ) -> RolloutBatch:
        """Rewards, advantages and the padded rollout batch for this rank's completions (refilled by dynamic
        sampling when it is on; ``sampling`` seeds its extra draws)."""
        source = policy_source(pl_module)
        g = self.num_generations
        scored, stats = self._rewards(source, batch, generation)
        if self.dynamic_sampling:
            scored = self._refill(trainer, pl_module, scored, sampling or self.sampling)
        rewards = scored.rewards  # [N]
        if self.multi_objective_aggregation == "normalize_then_sum":
            per_func = self._gathered(trainer, pl_module, scored.per_func)  # GDPO: batch-level renormalisation
            advantages = gdpo_advantages(per_func, self.reward_set.weights, g)
        else:
            gathered = self._gathered(trainer, pl_module, rewards, self.scale_rewards == "batch")
            advantages = group_advantages(gathered, g, self.scale_rewards)
        if advantages.numel() > rewards.numel():  # computed on the all-gathered batch: keep this rank's slice
            advantages = advantages.view(trainer.world_size, rewards.numel())[trainer.global_rank]
        group_std = rewards.view(-1, g).std(dim=1)  # [prompts]
        stats["train/frac_reward_zero_std"] = float((group_std < 1e-8).float().mean())
        pl_module.log_dict(stats, on_step=True, on_epoch=False, sync_dist=True)
        pl_module.log("reward", rewards.mean(), prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return assemble_rollout(
            scored.batch.prompt_ids, scored.generation, rewards, scored.per_func, advantages, g, source.pad_token_id
        )

    def _rewards(
        self, source: PolicySource, batch: PromptBatch, generation: GenerationOutput
    ) -> tuple[ScoredGroups, dict[str, float]]:
        """Score one prompt batch's completions; the stats describe the sampled (unfiltered) batch."""
        texts = source.tokenizer.batch_decode(generation.completion_ids, skip_special_tokens=True)
        columns = {k: per_completion(values, self.num_generations) for k, values in batch.columns.items()}
        prompts = columns.pop("prompt", [""] * len(texts))
        result = self.reward_set(texts, prompts, columns, completion_ids=generation.completion_ids)
        scored = ScoredGroups(batch, generation, result.total, result.per_func)
        return scored, {f"train/{k}": v for k, v in result.stats.items()}

    def _refill(
        self, trainer: L.Trainer, pl_module: L.LightningModule, scored: ScoredGroups, sampling: SamplingConfig
    ) -> ScoredGroups:
        """DAPO dynamic sampling: swap zero-signal groups for informative ones from extra prompt batches."""
        if self._extra_prompts is None:
            rows = trainer.datamodule.rows  # type: ignore[attr-defined]
            world = max(trainer.world_size, 1)
            self._extra_prompts = prompt_batches(rows, scored.num_groups, trainer.global_rank, world, self.seed + 1)
        extra_prompts = self._extra_prompts
        draws = iter(range(1, self.dynamic_sampling_max_draws + 1))
        source = policy_source(pl_module)

        def draw() -> ScoredGroups:
            prompts = next(extra_prompts)
            seed = None if sampling.seed is None else sampling.seed + 7919 * next(draws)
            generation = self.generate(trainer, prompts.prompt_ids, replace(sampling, seed=seed))
            return self._rewards(source, prompts, generation)[0]

        def any_rank_missing(missing: int) -> bool:  # every rank must take part in the same generate() calls
            if trainer.world_size <= 1:
                return missing > 0
            missing_here = torch.tensor(float(missing), device=pl_module.device)
            return bool(trainer.strategy.reduce(missing_here, reduce_op="sum") > 0)

        g = self.num_generations
        filled, stats = fill_informative(scored, draw, g, self.dynamic_sampling_max_draws, any_rank_missing)
        pl_module.log_dict(
            {f"train/dynamic_sampling/{k}": float(v) for k, v in asdict(stats).items()}, on_step=True, on_epoch=False
        )
        return filled

    @staticmethod
    def _gathered(
        trainer: L.Trainer, pl_module: L.LightningModule, values: torch.Tensor, needed: bool = True
    ) -> torch.Tensor:
        """Every rank's ``values`` concatenated (batch-level statistics need the global batch), when needed."""
        if not needed or trainer.world_size <= 1:
            return values
        gathered = trainer.strategy.all_gather(values.to(pl_module.device))  # [world, N, ...]
        return gathered.reshape(-1, *values.shape[1:]).cpu()

    def _sync(self, pl_module: L.LightningModule, force: bool = False, log: bool = True) -> None:
        if self.engine is None or (self.engine_name == "hf" and not self.overlap):
            return
        start = time.perf_counter()
        if self.overlapped is not None:  # every step, so that staleness stays one update
            self.overlapped.push(policy_source(pl_module).policy, self.policy_version)
        else:
            self.engine.sync_weights(policy_source(pl_module).policy, force=force)
        if log:
            pl_module.log("train/time/sync", time.perf_counter() - start, on_step=True, on_epoch=False)


def find_rollout_callback(trainer: L.Trainer) -> RolloutCallback | None:
    """The trainer's :class:`RolloutCallback`, if it has one (for callbacks that read its settings)."""
    callbacks: list[L.Callback] = trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning at run time
    return next((cb for cb in callbacks if isinstance(cb, RolloutCallback)), None)
