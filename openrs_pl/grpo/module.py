"""The GRPO LightningModule: policy, frozen reference and the loss, orchestrated.

One ``training_step`` consumes one generation batch: the rank's ``prompts_per_step`` prompts x G completions as a
:class:`~openrs_pl.rollout.types.RolloutBatch`, attached to the DataModule's
:class:`~openrs_pl.rollout.types.PromptBatch` (``batch.rollout``) by
:class:`~openrs_pl.rollout.callback.RolloutCallback` (which owns sampling, rewards and advantages). It cuts the
rollout into micro-batches of ``grpo.micro_batch_size`` completions and takes ``grpo.num_iterations`` optimizer
steps on it (manual optimisation, as in Lightning's own RL template: the micro-batching lives inside the step).
Log-probs are in :mod:`openrs_pl.grpo.logprobs`, all loss math in :mod:`openrs_pl.grpo.loss`; this class only
wires models, data and logging together. The weights load in :meth:`setup` (:meth:`load_models`), after the
config and the data have been checked.

Logged metrics (``train/`` prefix; names are stable): ``loss``, ``policy_loss``, ``kl``, ``clip_ratio``,
``clip_ratio/low``, ``clip_ratio/high``, ``grad_norm``, ``lr``, ``completions/mean_length``,
``completions/min_length``, ``completions/max_length``, ``completions/clipped_ratio`` (fraction truncated at the
length limit), ``sampler_logprob_diff`` (|engine - trainer| log-prob, when the engine reports log-probs). The
rollout callback adds ``reward/mean``, ``reward/std``, ``rewards/<name>/mean``, ``rewards/<name>/std``,
``frac_reward_zero_std``, ``time/generation`` and ``time/sync``. With the options on: ``entropy`` (when
entropies are computed), ``entropy_coef`` (adaptive entropy control), and from the callback
``dynamic_sampling/{draws,prompts_drawn,informative,filled_with_zero_signal}``.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    get_cosine_with_min_lr_schedule_with_warmup,
)

from openrs_pl.data.sources import first_line
from openrs_pl.export import HF_FILES_KEY, hf_files
from openrs_pl.grpo.accumulation import deepspeed_engine, is_deepspeed, no_backward_sync, set_accumulation_boundary
from openrs_pl.grpo.config import GRPOConfig, OptimConfig
from openrs_pl.grpo.logprobs import rollout_logprobs, score_completions
from openrs_pl.grpo.loss import GLOBAL_TOKEN_LOSSES, LossOutput, grpo_loss, logprob_gap, loss_mask
from openrs_pl.grpo.objectives import AdaptiveEntropy, sampler_is_weights, stale_is_weights
from openrs_pl.health.monitor import step_allowed
from openrs_pl.hub import resolve_model
from openrs_pl.rollout.types import PromptBatch, ReferenceScorer, RolloutBatch

log = logging.getLogger("openrs_pl.grpo")

DType = Literal["auto", "float32", "bfloat16", "float16"]


class GRPOModule(L.LightningModule):
    """GRPO fine-tuning of a causal LM.

    Args:
        name_or_path: local HF folder or hub id of the policy (the reference model starts from the same weights).
        grpo: the objective and micro-batch layout.
        optim: optimizer and learning-rate schedule.
        temperature: log-probs are scored at the sampling temperature (the CLI links it from
            ``rollout.temperature``).
        max_completion_length: the sampling length limit, dr_grpo's constant denominator (the CLI links it from
            ``rollout.max_completion_length``).
        gradient_checkpointing: recompute activations in backward to save memory (recipe: on).
        torch_dtype: dtype the weights are loaded in (recipe: bfloat16).
        attn_implementation: e.g. "flash_attention_2" on GPU (recipe); None = transformers' default.
    """

    def __init__(
        self,
        name_or_path: str,
        grpo: GRPOConfig = GRPOConfig(),
        optim: OptimConfig = OptimConfig(),
        temperature: float = 0.7,
        max_completion_length: int = 3584,
        gradient_checkpointing: bool = False,
        torch_dtype: DType = "auto",
        attn_implementation: str | None = None,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if max_completion_length < 1:
            raise ValueError(f"max_completion_length must be >= 1, got {max_completion_length}")
        if grpo.share_prompts and attn_implementation not in (None, "sdpa", "eager"):
            # Shared-prompt rows carry a 4D mask, which flash-attention cannot take: say so before any loading.
            raise ValueError(f"grpo.share_prompts needs sdpa or eager attention, not {attn_implementation!r}")
        # Local folder or hub id, decided once (fails fast offline); loaders and the vLLM engine read the location.
        location = resolve_model(name_or_path).location
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.grpo = grpo
        self.optim = optim
        self.temperature = temperature
        self.max_completion_length = max_completion_length
        self._name_or_path = location
        self._load_kwargs: dict[str, Any] = {"torch_dtype": torch_dtype, "attn_implementation": attn_implementation}
        self._gradient_checkpointing = gradient_checkpointing
        # A plain list keeps the reference out of the module tree: it is never trained, never in state_dict()
        # (so not checkpointed twice) and never wrapped by the strategy.
        self._reference: list[nn.Module] = []

    def load_models(self) -> None:
        """Load tokenizer, policy and (with ``beta > 0``) the frozen reference, once.

        Called from :meth:`setup`, after the DataModule's setup (so data errors come first) and outside
        Lightning's ``configure_model`` hook, which DeepSpeed ZeRO-3 runs inside ``zero.Init``: there
        ``from_pretrained`` would initialise already-partitioned (empty) parameters and fail.
        """
        if hasattr(self, "policy"):
            return
        self.tokenizer = AutoTokenizer.from_pretrained(self._name_or_path)
        policy = _load_causal_lm(self._name_or_path, **self._load_kwargs)
        if self._gradient_checkpointing:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            policy.config.use_cache = False
        self.policy = policy
        if self.grpo.beta > 0:
            ref = _load_causal_lm(self._name_or_path, **self._load_kwargs).eval().requires_grad_(False)
            self._reference.append(ref)
        self.entropy_control = self.grpo.adaptive_entropy()

    # ------------------------------------------------------------------------ PolicySource (the rollout's view)
    # ``policy`` (a submodule: state_dict keys start with "policy.") and ``tokenizer`` exist from load_models on.
    policy: PreTrainedModel
    tokenizer: Any

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    @property
    def name_or_path(self) -> str:
        return self._name_or_path

    @property
    def reference(self) -> nn.Module | None:
        return self._reference[0] if self._reference else None

    def reference_scorer(self) -> ReferenceScorer | None:
        """The reference's scoring for a generation thread (:class:`~openrs_pl.rollout.types.ReferenceSource`)."""
        if self.reference is None:
            return None
        return partial(
            score_completions, self.reference, temperature=self.temperature, grpo=self.grpo,
            pad_token_id=self.pad_token_id,
        )  # fmt: skip

    def setup(self, stage: str) -> None:
        self.load_models()
        # DeepSpeed ignores Lightning's clip_gradients and clips inside its own step, from its config, which it
        # reads after this hook. (Lightning forbids Trainer(gradient_clip_val) with manual optimisation.)
        if is_deepspeed(self.trainer.strategy) and self.optim.max_grad_norm is not None:
            self.trainer.strategy.config.setdefault("gradient_clipping", self.optim.max_grad_norm)  # type: ignore[attr-defined]

    def on_fit_start(self) -> None:
        # from_pretrained returns eval mode and Lightning leaves submodules as they are: train the policy in
        # train mode (dropout, if the architecture has any), keep the reference in eval mode.
        self.policy.train()
        if self.reference is not None:
            self.reference.to(self.device)

    # ----------------------------------------------------------------------------------------------- training
    def training_step(self, batch: PromptBatch, batch_idx: int) -> Tensor:
        if not isinstance(batch, PromptBatch) or batch.rollout is None:
            raise RuntimeError("batch has no rollout: add openrs_pl.rollout.RolloutCallback to trainer.callbacks")
        rollout = batch.rollout
        self.grpo.check_batch(rollout.num_completions)
        rollout = self._score_logprobs(rollout.to(self.device))
        num_active_tokens = self._global_active_tokens(rollout)
        passes = [self._optimizer_step(rollout, num_active_tokens) for _ in range(self.grpo.num_iterations)]
        self._log_rollout(rollout, pre_update_logprobs=passes[0][1])
        return torch.stack([loss for loss, _ in passes]).mean()

    @torch.no_grad()
    def _score_logprobs(self, rollout: RolloutBatch) -> RolloutBatch:
        """Add the frozen reference's log-probs (unless the generation thread brought them), and the pre-update
        policy's when there are several passes."""
        ref = None
        if self.reference is not None:
            ref = rollout.ref_logprobs if rollout.ref_logprobs is not None else self._logprobs(self.reference, rollout)
        # With one on-policy pass the old policy *is* the current one: the training forward's detached log-probs
        # serve as old log-probs (ratio 1, sampler IS weights, sampler-gap metric), with no forward of their own.
        old = self._logprobs(self.policy, rollout) if self.grpo.num_iterations > 1 else None
        return replace(rollout, ref_logprobs=ref, old_logprobs=old)

    def _logprobs(self, model: nn.Module, rollout: RolloutBatch, return_entropy: bool = False) -> Any:
        r = rollout
        return rollout_logprobs(
            model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask, self.temperature, self.grpo,
            return_entropy,
        )  # fmt: skip

    def _global_active_tokens(self, rollout: RolloutBatch) -> float | None:
        """Loss tokens of the whole optimizer step across ranks, divided by world size; only dapo needs them."""
        if self.grpo.loss_type not in GLOBAL_TOKEN_LOSSES:
            return None  # no cross-rank collective for the other normalisations
        mask = loss_mask(rollout.completion_mask, rollout.truncated, self.grpo.mask_truncated_completions)  # [N, L]
        tokens = mask.sum().float()
        total = self.trainer.strategy.all_gather(tokens).sum() if self.trainer.world_size > 1 else tokens
        return float(total) / self.trainer.world_size

    def _optimizer_step(self, rollout: RolloutBatch, num_active_tokens: float | None) -> tuple[Tensor, Tensor]:
        """One optimizer step over the rollout's micro-batches: the mean loss and the pass's detached ``[N, L]``
        log-probs (the pre-update policy's)."""
        opt = self._optimizer
        micro_batches = list(rollout.micro_batches(self.grpo.micro_batch_size))
        # grpo/bnpo/dr_grpo/sapo/luspo normalise per micro-batch, so accumulation averages them; the denominator
        # of dapo/cispo/vespo already spans the whole step.
        scale = 1.0 if self.grpo.loss_type in GLOBAL_TOKEN_LOSSES else 1.0 / len(micro_batches)
        totals: dict[str, Tensor] = {}
        pass_logprobs = []
        for i, mb in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            set_accumulation_boundary(self, last)
            with nullcontext() if last else no_backward_sync(self):
                out, logprobs = self._micro_batch_loss(mb, num_active_tokens, len(micro_batches))
                self.manual_backward(out.loss * scale)
            pass_logprobs.append(logprobs)
            for name, value in out._asdict().items():
                if value is None:
                    continue
                totals[name] = totals.get(name, 0.0) + value.detach() / len(micro_batches)
        grad_norm: Tensor | float | None = self._clip_gradients(opt.optimizer)
        if not step_allowed(self, totals["loss"]):  # TrainingHealth skips a non-finite step: nothing is applied
            opt.zero_grad(set_to_none=True)
            return totals["loss"], torch.cat(pass_logprobs)
        opt.step()
        engine = deepspeed_engine(self.trainer)
        if engine is not None:  # gradients live in ZeRO partitions: ask the engine
            grad_norm = float(engine.get_global_grad_norm() or 0.0)
        opt.zero_grad(set_to_none=True)
        self._lr_scheduler.step()
        if self.entropy_control is not None:  # one coefficient on every rank: update it from the mean over ranks
            entropy = self.trainer.strategy.reduce(totals["entropy"], reduce_op="mean")
            totals["entropy_coef"] = torch.tensor(self.entropy_control.update(float(entropy)))  # Lightning moves it
        metrics: dict[str, Tensor | float] = {
            f"train/{k}": v for k, v in totals.items() if k not in ("clip_ratio_low", "clip_ratio_high")
        }
        metrics |= {
            "train/clip_ratio/low": totals["clip_ratio_low"],
            "train/clip_ratio/high": totals["clip_ratio_high"],
        }
        # Python floats, not CPU tensors: sync_dist would all-reduce a CPU tensor, which NCCL cannot.
        metrics |= {"train/lr": float(opt.param_groups[0]["lr"])}
        if grad_norm is not None:
            metrics["train/grad_norm"] = float(grad_norm)
        self.log_dict(metrics, on_step=True, on_epoch=False, sync_dist=True)
        # The bar's own counter is per epoch; GRPO runs are counted in optimizer steps.
        self.log("step", float(self.global_step), prog_bar=True, on_step=True, on_epoch=False, logger=False)
        self.log("kl", totals["kl"], prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return totals["loss"], torch.cat(pass_logprobs)

    def _micro_batch_loss(
        self, mb: RolloutBatch, num_active_tokens: float | None, num_micro_batches: int
    ) -> tuple[LossOutput, Tensor]:
        """The micro-batch's loss and its detached ``[n, L]`` policy log-probs."""
        g = self.grpo
        if g.needs_entropies:
            logprobs, entropies = self._logprobs(self.policy, mb, return_entropy=True)  # [n, L] each, with grad
        else:
            logprobs, entropies = self._logprobs(self.policy, mb), None  # [n, L] with grad
        old = mb.old_logprobs if mb.old_logprobs is not None else logprobs.detach()  # [n, L]
        is_weights = self._is_weights(mb, old)
        entropy_coef = g.entropy_coef if self.entropy_control is None else self.entropy_control.applied_coef()
        if g.loss_type in GLOBAL_TOKEN_LOSSES:  # the step does not divide these losses by the micro-batch count,
            entropy_coef /= num_micro_batches  # but the bonus is a per-micro-batch mean: average it (as TRL)
        out = grpo_loss(
            logprobs,
            mb.old_logprobs,
            mb.ref_logprobs,
            mb.advantages,
            mb.completion_mask,
            **g.loss_options(),
            max_completion_length=self.max_completion_length,
            num_active_tokens=num_active_tokens,
            truncated=mb.truncated,
            is_weights=is_weights,
            sampler_logprobs=mb.sampler_logprobs,
            entropies=entropies,
            entropy_coef=entropy_coef,
        )
        return out, logprobs.detach()

    def _is_weights(self, mb: RolloutBatch, old: Tensor) -> Tensor | None:
        """Importance weights for the engine's samples against the pre-update policy's ``old`` ``[n, L]``
        log-probs: the configured sampler correction when on, else truncated IS on the completions that overlapped
        rollouts sampled with older weights; None when there is nothing to correct."""
        g = self.grpo
        if mb.sampler_logprobs is None:
            return None
        mask = loss_mask(mb.completion_mask, mb.truncated, False)  # [n, L]
        if g.vllm_importance_sampling_correction:
            return sampler_is_weights(
                old, mb.sampler_logprobs, mask, g.vllm_importance_sampling_mode,
                g.vllm_importance_sampling_clip_min, g.vllm_importance_sampling_clip_max,
            )  # fmt: skip
        if mb.staleness is not None and bool((mb.staleness > 0).any()):
            cap = g.vllm_importance_sampling_clip_max
            return stale_is_weights(old, mb.sampler_logprobs, mask, mb.staleness, cap)
        return None

    def _clip_gradients(self, optimizer: torch.optim.Optimizer) -> Tensor | None:
        if self.optim.max_grad_norm is None or is_deepspeed(self.trainer.strategy):
            return None
        grads = [p.grad for p in self.policy.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        self.clip_gradients(optimizer, gradient_clip_val=self.optim.max_grad_norm, gradient_clip_algorithm="norm")
        return norm

    def _log_rollout(self, rollout: RolloutBatch, pre_update_logprobs: Tensor) -> None:
        """Completion-length statistics, and the sampler gap against the first pass's ``[N, L]`` log-probs."""
        lengths = rollout.completion_mask.sum(dim=1).float()  # [N]
        metrics = {
            "train/completions/mean_length": lengths.mean(),
            "train/completions/min_length": lengths.min(),
            "train/completions/max_length": lengths.max(),
            "train/completions/clipped_ratio": rollout.truncated.float().mean(),
        }
        if rollout.sampler_logprobs is not None:
            gap = logprob_gap(rollout.sampler_logprobs, pre_update_logprobs, rollout.completion_mask)
            metrics["train/sampler_logprob_diff"] = gap
        self.log_dict(metrics, on_step=True, on_epoch=False, sync_dist=True)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.entropy_control is not None and "entropy_control" in checkpoint:
            self.entropy_control = AdaptiveEntropy(**checkpoint["entropy_control"])

    # ------------------------------------------------------------------------------------------- optimisers
    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        o = self.optim
        optimizer = torch.optim.AdamW(
            self.policy.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay, fused=o.fused
        )
        total = self._total_optimizer_steps()
        scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            optimizer,
            num_warmup_steps=round(o.warmup_ratio * total),
            num_training_steps=total,
            min_lr_rate=o.min_lr_rate,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # Lightning's accessors are typed for any number of optimizers and schedulers; configure_optimizers returns one
    # of each, so these narrow to it (and fail loudly should that ever change).
    @property
    def _optimizer(self) -> LightningOptimizer:
        opt = self.optimizers()
        if not isinstance(opt, LightningOptimizer):
            raise TypeError(f"GRPOModule trains with one optimizer, got {opt!r}")
        return opt

    @property
    def _lr_scheduler(self) -> LRScheduler:
        scheduler = self.lr_schedulers()
        if not isinstance(scheduler, LRScheduler):
            raise TypeError(f"GRPOModule steps one learning-rate scheduler, got {scheduler!r}")
        return scheduler

    def _total_optimizer_steps(self) -> int:
        if self.trainer.max_steps > 0:
            return self.trainer.max_steps
        return int(self.trainer.estimated_stepping_batches) * self.grpo.num_iterations

    # -------------------------------------------------------------------------------------------- exporting
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The checkpoint alone is enough for `openrs-pl export`: it keeps the policy's config and tokenizer files.
        checkpoint[HF_FILES_KEY] = hf_files(self.policy, self.tokenizer)
        if self.entropy_control is not None:  # the adaptive coefficient is training state: resume continues it
            checkpoint["entropy_control"] = asdict(self.entropy_control)

    def export_hf(self, out_dir: str | Path) -> Path:
        """Save the policy and tokenizer as a plain HF folder (loadable by transformers and vLLM)."""
        out = Path(out_dir)
        self.policy.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        return out


def _load_causal_lm(model: str, torch_dtype: DType, attn_implementation: str | None) -> PreTrainedModel:
    """``from_pretrained`` with one clear error when the path or hub id cannot be loaded."""
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        return AutoModelForCausalLM.from_pretrained(model, **kwargs)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"cannot load model {model}: {err.__class__.__name__}: {first_line(err)}; "
            "pass a folder written by save_pretrained (e.g. `python -m openrs_pl.models.tiny runs/tiny`) or a hub id"
        ) from None
