"""The callback that drives rollouts: generate, score, compute advantages, hand the batch to the module, sync.

Per optimizer step on every rank: take the DataModule's prompts from ``batch``, ask the engine for G completions
each, decode them, score them with the module's reward set, turn rewards into group-relative advantages and put
the padded :class:`RolloutBatch` into ``batch["rollout"]`` for ``training_step``. After the step, push the new
policy weights into the engine (every ``sync_every`` steps; the HF engine samples from the policy itself and
needs none). Groups never straddle ranks: each rank's prompts are expanded to their G completions locally, and
in the dedicated vLLM mode rank 0 generates for everyone and sends each rank back exactly its own groups.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from typing import Any, Literal

import lightning as L
import torch

from openrs_pl.grpo.loss import group_advantages
from openrs_pl.grpo.objectives import gdpo_advantages
from openrs_pl.rollout.assemble import assemble_rollout
from openrs_pl.rollout.dynamic_sampling import ScoredGroups, fill_informative, prompt_batches
from openrs_pl.rollout.engine import GenerationEngine
from openrs_pl.rollout.hf_engine import HFEngine
from openrs_pl.rollout.types import GenerationOutput, RolloutBatch, SamplingConfig
from openrs_pl.rollout.vllm_engine import VLLMConfig

EngineName = Literal["hf", "vllm"]


class RolloutCallback(L.Callback):
    """Generates and scores each step's rollouts and keeps the engine's weights in sync with the policy.

    Args:
        engine: ``hf`` (``model.generate`` on the policy; nothing to sync) or ``vllm``.
        vllm: vLLM engine settings (mode dedicated|colocate, device, memory, max_model_len, dtype, sync_every).
        hf_batch_size: prompts per ``generate`` call for the HF engine (None = the whole batch).
        seed: base sampling seed; each step and rank derive their own from it, so runs are reproducible.
    """

    def __init__(
        self,
        engine: EngineName = "hf",
        vllm: VLLMConfig | None = None,
        hf_batch_size: int | None = None,
        seed: int = 42,
    ) -> None:
        super().__init__()
        self.engine_name = engine
        self.vllm_config = vllm if vllm is not None else VLLMConfig()
        self.hf_batch_size = hf_batch_size
        self.seed = seed
        self.engine: GenerationEngine | None = None
        self._extra_prompts: Iterator[dict[str, list[Any]]] | None = None  # dynamic sampling's own prompt stream

    # ------------------------------------------------------------------------------------------ lifecycle
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.engine is not None:
            return
        if self.engine_name == "hf":
            self.engine = HFEngine(
                pl_module.policy,
                eos_token_id=pl_module.tokenizer.eos_token_id,
                pad_token_id=pl_module.pad_token_id,
                batch_size=self.hf_batch_size,
            )
        else:
            self.engine = self._build_vllm_engine(trainer, pl_module)

    def _build_vllm_engine(self, trainer: L.Trainer, pl_module: L.LightningModule) -> GenerationEngine | None:
        from openrs_pl.rollout.vllm_engine import VLLMEngine

        # Dedicated mode: one engine, in rank 0's process, on its own device; the other ranks have none.
        if self.vllm_config.mode == "dedicated" and trainer.global_rank != 0:
            return None
        return VLLMEngine(
            pl_module.model_name, self.vllm_config, seed=self.seed + trainer.global_rank, local_rank=trainer.local_rank
        )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # vLLM's own shutdown would destroy the trainer's process group if left to the interpreter's exit.
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()
        self.engine = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Resuming from a checkpoint: the engine was started from the base weights, the policy was not.
        if self.engine_name == "vllm" and trainer.global_step > 0:
            self._sync(pl_module, force=True)

    # ------------------------------------------------------------------------------------------- per step
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        g = pl_module.grpo.num_generations
        seed = self.seed + trainer.global_step * max(trainer.world_size, 1) + trainer.global_rank
        sampling = pl_module.generation.sampling(n=g, seed=seed)
        start = time.perf_counter()
        generation = self.generate(trainer, batch["prompt_ids"], sampling)
        sleep = getattr(self.engine, "sleep", None)  # colocate + sleep mode: free the engine's memory for training
        if sleep is not None:
            sleep()
        pl_module.log("train/time/generation", time.perf_counter() - start, on_step=True, on_epoch=False)
        batch["rollout"] = self._score(trainer, pl_module, batch, generation, sampling)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # The engine applies its own `sync_every`; the HF engine samples from the policy and needs no sync.
        if self.engine_name != "hf":
            self._sync(pl_module)

    def generate(self, trainer: L.Trainer, prompt_ids: list[list[int]], sampling: SamplingConfig) -> GenerationOutput:
        """Completions for this rank's prompts (in the dedicated vLLM mode, via rank 0). Every rank must call it."""
        if self.engine_name == "vllm" and self.vllm_config.mode == "dedicated":
            from openrs_pl.rollout.dispatch import generate_on_rank_zero

            return generate_on_rank_zero(self.engine, prompt_ids, sampling)
        assert self.engine is not None, "engine not built: RolloutCallback.setup did not run"
        return self.engine.generate(prompt_ids, sampling)

    def _score(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: dict[str, Any],
        generation: GenerationOutput,
        sampling: SamplingConfig,
    ) -> RolloutBatch:
        g = pl_module.grpo.num_generations
        scored, stats = self._rewards(pl_module, batch, generation)
        if pl_module.grpo.dynamic_sampling:
            scored = self._refill(trainer, pl_module, scored, sampling)
        rewards = scored.rewards  # [N]
        if pl_module.grpo.multi_objective_aggregation == "normalize_then_sum":
            per_func = self._gathered(trainer, pl_module, scored.per_func)  # GDPO: batch-level renormalisation
            advantages = gdpo_advantages(per_func, pl_module.reward_set.weights, g)
        else:
            advantages = group_advantages(
                self._gathered(trainer, pl_module, rewards, pl_module.grpo.scale_rewards == "batch"),
                g,
                pl_module.grpo.scale_rewards,
            )
        if advantages.numel() > rewards.numel():  # computed on the all-gathered batch: keep this rank's slice
            advantages = advantages.view(trainer.world_size, rewards.numel())[trainer.global_rank]
        group_std = rewards.view(-1, g).std(dim=1)  # [prompts]
        stats["train/frac_reward_zero_std"] = float((group_std < 1e-8).float().mean())
        pl_module.log_dict(stats, on_step=True, on_epoch=False, sync_dist=True)
        pl_module.log("reward", rewards.mean(), prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return assemble_rollout(
            scored.batch["prompt_ids"], scored.generation, rewards, scored.per_func, advantages, g,
            pl_module.pad_token_id,
        )  # fmt: skip

    @staticmethod
    def _rewards(
        pl_module: L.LightningModule, batch: dict[str, Any], generation: GenerationOutput
    ) -> tuple[ScoredGroups, dict[str, float]]:
        """Score one prompt batch's completions; the stats describe the sampled (unfiltered) batch."""
        g = pl_module.grpo.num_generations
        texts = pl_module.tokenizer.batch_decode(generation.completion_ids, skip_special_tokens=True)
        columns = {k: [v for v in values for _ in range(g)] for k, values in batch.items() if k != "prompt_ids"}
        prompts = columns.pop("prompt", [""] * len(texts))
        result = pl_module.reward_set(texts, prompts, columns, completion_ids=generation.completion_ids)
        prompt_columns = {k: v for k, v in batch.items() if k != "rollout"}
        scored = ScoredGroups(prompt_columns, generation, result.total, result.per_func)
        return scored, {f"train/{k}": v for k, v in result.stats.items()}

    def _refill(
        self, trainer: L.Trainer, pl_module: L.LightningModule, scored: ScoredGroups, sampling: SamplingConfig
    ) -> ScoredGroups:
        """DAPO dynamic sampling: swap zero-signal groups for informative ones from extra prompt batches."""
        if self._extra_prompts is None:
            dm = trainer.datamodule
            self._extra_prompts = prompt_batches(
                dm.rows, scored.num_groups, trainer.global_rank, max(trainer.world_size, 1), self.seed + 1
            )
        draws = iter(range(1, pl_module.grpo.dynamic_sampling_max_draws + 1))

        def draw() -> ScoredGroups:
            prompts = next(self._extra_prompts)
            seed = None if sampling.seed is None else sampling.seed + 7919 * next(draws)
            extra_sampling = replace(sampling, seed=seed)
            return self._rewards(pl_module, prompts, self.generate(trainer, prompts["prompt_ids"], extra_sampling))[0]

        def any_rank_missing(missing: int) -> bool:  # every rank must take part in the same generate() calls
            if trainer.world_size <= 1:
                return missing > 0
            missing_here = torch.tensor(float(missing), device=pl_module.device)
            return bool(trainer.strategy.reduce(missing_here, reduce_op="sum") > 0)

        g = pl_module.grpo.num_generations
        filled, stats = fill_informative(scored, draw, g, pl_module.grpo.dynamic_sampling_max_draws, any_rank_missing)
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
        gathered = pl_module.all_gather(values.to(pl_module.device))  # [world, N, ...]
        return gathered.reshape(-1, *values.shape[1:]).cpu()

    def _sync(self, pl_module: L.LightningModule, force: bool = False) -> None:
        if self.engine is None:
            return
        start = time.perf_counter()
        self.engine.sync_weights(pl_module.policy, force=force)  # only the vLLM engine is ever synced
        pl_module.log("train/time/sync", time.perf_counter() - start, on_step=True, on_epoch=False)
