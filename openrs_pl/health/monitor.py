"""``TrainingHealth``: watch a GRPO run for the failure modes small-model RL is known for, and act on them.

The Open-RS paper (Dang & Ngo 2025, Sec. 3-4) reports that its runs improved for 50-100 steps and then degraded:
completions crept up to the length limit and were truncated, accuracy fell, and the rest of the 24 h budget was
spent on a worse model. This callback turns the per-step metrics the module already logs into decisions:

=================  ==========================================================  =====================================
condition          detected when (over the last ``window`` optimizer steps)     metrics read
=================  ==========================================================  =====================================
``truncation``     mean clipped ratio >= ``truncation_ratio``, or mean length   ``train/completions/clipped_ratio``,
                   >= ``length_ratio`` x ``max_completion_length``              ``train/completions/mean_length``
``collapse``       window mean of the reward < its running best (of window      ``collapse_metric`` (accuracy mean;
                   means) minus ``collapse_drop`` x abs(best)                   ``train/reward/mean`` if not logged)
``kl_spike``       KL > ``spike_factor`` x the window median and > ``kl_floor``  ``train/kl``
``grad_spike``     grad norm > ``spike_factor`` x the window median and         ``train/grad_norm``
                   > ``grad_norm_floor``
``nonfinite``      the step's loss or any gradient is NaN/inf (checked before   the loss and ``.grad`` tensors
                   ``optimizer.step()`` through :func:`step_allowed`)
=================  ==========================================================  =====================================

Each condition has an action, set in YAML (``on_truncation: stop``): ``off``; ``warn`` (the reason is printed
once, and ``health/<condition>`` is logged as 1 at every step it holds); ``skip`` (``nonfinite`` only: the
optimizer step is not taken, so weights and optimizer state are untouched, and ``health/skipped_steps`` counts
it); ``stop`` (training ends after this step with a report of why, what was saved and how to continue);
``rollback`` (the newest checkpoint written before the condition began is restored, weights and optimizer state,
and the learning rate is multiplied by ``rollback_lr_factor``; after ``max_rollbacks`` it stops instead).
Decisions use rank-reduced metrics, so every rank takes the same one.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from openrs_pl.rollout.callback import find_rollout_callback, policy_source

log = logging.getLogger("openrs_pl.health")

Action = Literal["off", "warn", "skip", "stop", "rollback"]
CONDITIONS = ("truncation", "collapse", "kl_spike", "grad_spike", "nonfinite")


class TrainingHealth(L.Callback):
    """Detects truncation, reward collapse, KL / grad-norm spikes and non-finite steps; warns, skips, stops or
    rolls back as configured.

    Args:
        window: optimizer steps averaged before a condition is judged (and the history of the spike medians).
        truncation_ratio: mean fraction of completions cut at the length limit that counts as truncation.
        length_ratio: mean completion length, as a fraction of ``max_completion_length``, that counts too.
        collapse_metric: logged metric whose fall counts as collapse; ``train/reward/mean`` when it is absent.
        collapse_drop: fraction of the running best (of window means) that may be lost before it is a collapse.
        spike_factor: a KL or grad norm this many times the window's median is a spike.
        kl_floor: KL values below this are never spikes (KL starts at exactly 0).
        grad_norm_floor: grad norms below this are never spikes.
        on_truncation: action for ``truncation``.
        on_collapse: action for ``collapse``.
        on_kl_spike: action for ``kl_spike``.
        on_grad_spike: action for ``grad_spike``.
        on_nonfinite: action for a NaN/inf loss or gradient (``skip`` keeps the weights as they were).
        max_consecutive_skips: this many skipped steps in a row stop the run (the weights themselves are bad).
        rollback_lr_factor: the learning rate is multiplied by this at each rollback.
        max_rollbacks: rollbacks allowed before a condition that asks for one stops the run instead.
    """

    def __init__(
        self,
        window: int = 10,
        truncation_ratio: float = 0.5,
        length_ratio: float = 0.95,
        collapse_metric: str = "train/rewards/accuracy/mean",
        collapse_drop: float = 0.5,
        spike_factor: float = 10.0,
        kl_floor: float = 0.05,
        grad_norm_floor: float = 1.0,
        on_truncation: Action = "warn",
        on_collapse: Action = "warn",
        on_kl_spike: Action = "warn",
        on_grad_spike: Action = "warn",
        on_nonfinite: Action = "skip",
        max_consecutive_skips: int = 5,
        rollback_lr_factor: float = 0.5,
        max_rollbacks: int = 2,
    ) -> None:
        super().__init__()
        if window < 1 or not 0 < collapse_drop <= 1 or spike_factor <= 1 or not 0 < rollback_lr_factor <= 1:
            raise ValueError(
                "TrainingHealth: need window >= 1, 0 < collapse_drop <= 1, spike_factor > 1 and"
                " 0 < rollback_lr_factor <= 1"
            )
        self.actions: dict[str, Action] = {
            "truncation": on_truncation,
            "collapse": on_collapse,
            "kl_spike": on_kl_spike,
            "grad_spike": on_grad_spike,
            "nonfinite": on_nonfinite,
        }
        for condition, action in self.actions.items():
            if action not in ("off", "warn", "skip", "stop", "rollback"):
                raise ValueError(f"TrainingHealth: on_{condition} must be off|warn|skip|stop|rollback, got {action!r}")
            if action == "skip" and condition != "nonfinite":
                raise ValueError(f"TrainingHealth: 'skip' is only for on_nonfinite, not on_{condition}")
        self.window = window
        self.truncation_ratio = truncation_ratio
        self.length_ratio = length_ratio
        self.collapse_metric = collapse_metric
        self.collapse_drop = collapse_drop
        self.spike_factor = spike_factor
        self.kl_floor = kl_floor
        self.grad_norm_floor = grad_norm_floor
        self.max_consecutive_skips = max_consecutive_skips
        self.rollback_lr_factor = rollback_lr_factor
        self.max_rollbacks = max_rollbacks
        self.counts = {c: 0 for c in CONDITIONS}  # steps on which each condition held
        self.skipped_steps = 0
        self.rollbacks = 0
        self.stop_reason: str | None = None
        self._reset_history()
        self._warned: set[str] = set()
        self._consecutive_skips = 0
        self._pending: list[tuple[str, str]] = []  # (condition, reason) raised during the step
        self._last_healthy_step = 0
        self._checkpoint_steps: dict[str, int] = {}

    def _reset_history(self) -> None:
        self._history: dict[str, deque[float]] = {
            k: deque(maxlen=self.window) for k in ("clipped", "length", "reward", "kl", "grad_norm")
        }
        self._best: tuple[float, int] | None = None  # (best window mean, step)

    # ----------------------------------------------------------------------------------- non-finite steps
    def check_step(self, pl_module: L.LightningModule, loss: torch.Tensor) -> bool:
        """Whether this optimizer step may be applied: False for a non-finite loss/gradient unless the action is
        ``warn`` or ``off``. Called by the module just before ``optimizer.step()``."""
        trainer = pl_module.trainer
        finite = bool(torch.isfinite(loss).all())
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if finite and grads:
            finite = bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=float("inf"))))
        # DeepSpeed keeps gradients in its own partitions (no .grad) and the loss is per rank: agree on one answer.
        finite = bool(trainer.strategy.reduce_boolean_decision(finite, all=True))
        action = self.actions["nonfinite"]
        if finite or action == "off":
            self._consecutive_skips = 0
            return True
        step = trainer.global_step
        self.counts["nonfinite"] += 1
        what = "loss" if not torch.isfinite(loss).all() else "gradients"
        if action == "warn":
            self._raise("nonfinite", f"non-finite {what} at step {step}: the step was applied anyway")
            return True
        self.skipped_steps += 1
        self._consecutive_skips += 1
        reason = f"non-finite {what} at step {step}: optimizer step skipped, weights and optimizer state unchanged"
        if action == "skip" and self._consecutive_skips >= self.max_consecutive_skips:
            self._pending.append(("nonfinite", f"{reason}; {self._consecutive_skips} skipped in a row"))
            self._stop_next = True
        self._raise("nonfinite", reason, announce=action == "skip")
        return False

    # ------------------------------------------------------------------------------------ per-step checks
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self._pending = []
        self._stop_next = False
        self._step_before = trainer.global_step
        self._record_checkpoints(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stepped = trainer.global_step > self._step_before
        metrics = {k: _scalar(v) for k, v in trainer.callback_metrics.items()}
        if stepped:
            self._observe(trainer, pl_module, metrics)
        held = {c for c, _ in self._pending}
        for condition in CONDITIONS:
            pl_module.log(f"health/{condition}", float(condition in held), on_step=True, on_epoch=False)
        pl_module.log("health/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
        pl_module.log("health/rollbacks", float(self.rollbacks), on_step=True, on_epoch=False)
        if not held:
            if stepped:  # this step's rollouts (and KL, gradients) came from the weights before its update
                self._last_healthy_step = trainer.global_step - 1
            return
        actions = {self.actions[c] for c, _ in self._pending}
        reasons = "; ".join(r for _, r in self._pending)
        if self._stop_next or "stop" in actions:
            self._stop(trainer, reasons)
        elif "rollback" in actions:
            self._rollback(trainer, pl_module, reasons, held)

    def _observe(self, trainer: L.Trainer, pl_module: L.LightningModule, m: dict[str, float]) -> None:
        h, step = self._history, trainer.global_step
        for key, name in (("clipped", "train/completions/clipped_ratio"), ("length", "train/completions/mean_length")):
            if name in m:
                h[key].append(m[name])
        reward_name = self.collapse_metric if self.collapse_metric in m else "train/reward/mean"
        if reward_name in m and math.isfinite(m[reward_name]):
            h["reward"].append(m[reward_name])
        full = len(h["clipped"]) == self.window
        if full:
            clipped, length = statistics.fmean(h["clipped"]), statistics.fmean(h["length"])
            limit = _max_completion_length(pl_module)
            if clipped >= self.truncation_ratio or (limit and length >= self.length_ratio * limit):
                self._condition(
                    "truncation",
                    f"truncation at step {step}: {clipped:.0%} of completions hit the {limit}-token limit and the mean"
                    f" length is {length:.0f} tokens over the last {self.window} steps (thresholds: clipped ratio"
                    f" {self.truncation_ratio}, length {self.length_ratio} x limit)",
                )
        if len(h["reward"]) == self.window:
            mean = statistics.fmean(h["reward"])
            if self._best is None or mean > self._best[0]:
                self._best = (mean, step)
            best, best_step = self._best
            if mean < best - self.collapse_drop * abs(best):
                self._condition(
                    "collapse",
                    f"collapse at step {step}: {reward_name} averaged {mean:.3f} over the last {self.window} steps,"
                    f" down from its best {best:.3f} (window ending at step {best_step}; allowed drop"
                    f" {self.collapse_drop:.0%})",
                )
        for key, name, floor, cond in (
            ("kl", "train/kl", self.kl_floor, "kl_spike"),
            ("grad_norm", "train/grad_norm", self.grad_norm_floor, "grad_spike"),
        ):
            if name not in m or not math.isfinite(m[name]):
                continue
            value, past = m[name], h[key]
            spike = len(past) >= min(self.window, 3) and value > max(floor, self.spike_factor * statistics.median(past))
            if spike:
                self._condition(
                    cond,
                    f"{cond.replace('_', ' ')} at step {step}: {name} = {value:.4g}, more than {self.spike_factor:g} x"
                    f" the median {statistics.median(past):.4g} of the previous {len(past)} steps",
                )
            past.append(value)

    def _condition(self, condition: str, reason: str) -> None:
        if self.actions[condition] == "off":
            return
        self.counts[condition] += 1
        self._raise(condition, reason)

    def _raise(self, condition: str, reason: str, announce: bool = True) -> None:
        self._pending.append((condition, reason))
        action = self.actions[condition]
        if announce and (condition not in self._warned or action != "warn"):
            self._warned.add(condition)
            _rank_zero_warning(f"[health] {reason} -> on_{condition}: {action}")

    # ----------------------------------------------------------------------------------------- actions
    def _stop(self, trainer: L.Trainer, reasons: str) -> None:
        trainer.should_stop = True
        self.stop_reason = reasons
        _rank_zero_warning(
            f"[health] stopping at step {trainer.global_step}: {reasons}.\n[health] {describe_saved(trainer)}"
        )

    def _rollback(self, trainer: L.Trainer, pl_module: L.LightningModule, reasons: str, held: set[str]) -> None:
        if self.rollbacks >= self.max_rollbacks:
            self._stop(trainer, f"{reasons}; already rolled back {self.rollbacks} times (max_rollbacks)")
            return
        bound = self._last_healthy_step
        if "collapse" in held and self._best is not None:
            bound = min(bound, self._best[1] - 1)
        path = self._checkpoint_at_or_before(bound)
        if path is None:
            self._stop(trainer, f"{reasons}; no checkpoint from step <= {bound} is left to roll back to")
            return
        strategy = trainer.strategy
        checkpoint = strategy.load_checkpoint(path)
        strategy.load_model_state_dict(checkpoint)  # DeepSpeed: already restored by its engine
        strategy.load_optimizer_state_dict(checkpoint)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] *= self.rollback_lr_factor
                if "initial_lr" in group:
                    group["initial_lr"] *= self.rollback_lr_factor
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            scheduler.base_lrs = [lr * self.rollback_lr_factor for lr in scheduler.base_lrs]
            lambdas = _lambdas(scheduler)  # empty for other schedulers
            for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, lambdas, strict=False):
                group["lr"] = base * fn(scheduler.last_epoch)  # the schedule's lr now, not the checkpoint's
        _resync_engines(trainer, pl_module)
        self.rollbacks += 1
        self._reset_history()
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        _rank_zero_warning(
            f"[health] rolled back to {path} (step {self._checkpoint_steps[path]}) at step {trainer.global_step}"
            f" because {reasons}; learning rate x{self.rollback_lr_factor} (now {lr:.3g}); rollback"
            f" {self.rollbacks} of {self.max_rollbacks}"
        )

    def _record_checkpoints(self, trainer: L.Trainer) -> None:
        """Remember the step of each checkpoint file ModelCheckpoint writes (read at the next step's start)."""
        for cb in trainer.checkpoint_callbacks:
            newest = getattr(cb, "_last_checkpoint_saved", "")
            if isinstance(cb, ModelCheckpoint) and newest:
                self._checkpoint_steps[newest] = cb._last_global_step_saved

    def _checkpoint_at_or_before(self, step: int) -> str | None:
        candidates = [(s, p) for p, s in self._checkpoint_steps.items() if s <= step and Path(p).exists()]
        return max(candidates)[1] if candidates else None

    # ------------------------------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "skipped_steps": self.skipped_steps, "rollbacks": self.rollbacks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.counts.update(state_dict.get("counts", {}))
        self.skipped_steps = state_dict.get("skipped_steps", 0)
        self.rollbacks = state_dict.get("rollbacks", 0)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        held = {c: n for c, n in self.counts.items() if n}
        if held or self.skipped_steps or self.rollbacks:
            _rank_zero_warning(
                f"[health] run summary: conditions (steps held): {held}; skipped steps: {self.skipped_steps};"
                f" rollbacks: {self.rollbacks}"
            )


def step_allowed(pl_module: L.LightningModule, loss: torch.Tensor) -> bool:
    """The module's hook before ``optimizer.step()``: False when :class:`TrainingHealth` skips a non-finite step.

    Without a ``TrainingHealth`` callback every step is allowed (and nothing is checked).
    """
    callbacks: list[L.Callback] = pl_module.trainer.callbacks  # type: ignore[attr-defined]  # set at run time
    health = next((cb for cb in callbacks if isinstance(cb, TrainingHealth)), None)
    return True if health is None else health.check_step(pl_module, loss)


def describe_saved(trainer: L.Trainer) -> str:
    """What is on disk and the command that continues from it."""
    paths = [
        p
        for cb in trainer.checkpoint_callbacks
        if isinstance(cb, ModelCheckpoint)
        for p in (getattr(cb, "_last_checkpoint_saved", ""), cb.last_model_path, cb.best_model_path, *cb.best_k_models)
        if p and Path(p).exists()
    ]
    if not paths:
        return "no checkpoint has been written yet"
    newest = max(dict.fromkeys(paths), key=lambda p: Path(p).stat().st_mtime)
    from openrs_pl.health.checkpointing import continue_command

    return f"newest checkpoint: {newest}; continue with: {continue_command(newest)}"


def _scalar(value: Any) -> float:
    return float(value.detach().float().mean()) if isinstance(value, torch.Tensor) else float(value)


def _max_completion_length(pl_module: L.LightningModule) -> int | None:
    return getattr(pl_module, "max_completion_length", None)


def _resync_engines(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """A rollout engine holding its own copy of the weights (vLLM) must see the restored ones."""
    rollout = find_rollout_callback(trainer)
    if rollout is not None and rollout.engine is not None:  # the HF engine's sync is a no-op: it samples the policy
        rollout.engine.sync_weights(policy_source(pl_module).policy, force=True)


def _lambdas(scheduler: Any) -> list[Any]:
    """A LambdaLR's multipliers (the cosine-with-warm-up schedule is one); none for other schedulers."""
    return list(getattr(scheduler, "lr_lambdas", []))


@rank_zero_only
def _rank_zero_warning(message: str) -> None:
    log.warning(message)
