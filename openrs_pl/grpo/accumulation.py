"""Micro-batch gradient accumulation under DDP and DeepSpeed: which backward syncs, which ends the step.

The module runs its own micro-batches inside one ``training_step`` (manual optimization), so it tells the
strategy itself: DDP skips the all-reduce on all but the last backward; DeepSpeed is told where the step's
accumulation boundary is.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Protocol

import lightning as L


def is_deepspeed(strategy: Any) -> bool:
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return isinstance(strategy, DeepSpeedStrategy)


class DeepSpeedEngine(Protocol):
    """The calls the optimizer step makes on ``deepspeed.DeepSpeedEngine`` (typed here: deepspeed ships no types,
    and a ``TYPE_CHECKING`` import would still run when the CLI resolves this module's annotations)."""

    def get_global_grad_norm(self) -> float | None: ...

    def set_gradient_accumulation_boundary(self, is_gradient_accumulation_boundary: bool) -> None: ...


def deepspeed_engine(trainer: L.Trainer) -> DeepSpeedEngine | None:
    """The engine DeepSpeed wraps the module in, or None under any other strategy."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = trainer.strategy
    return strategy.deepspeed_engine if isinstance(strategy, DeepSpeedStrategy) else None


def no_backward_sync(module: L.LightningModule) -> Any:
    """Skip DDP's gradient all-reduce on all but the last micro-batch of an optimizer step.

    Not under DeepSpeed: Lightning's ``block_backward_sync`` would call the engine's ``no_sync``, which asserts under
    ZeRO-2/3; the engine reduces at the accumulation boundary set by :func:`set_accumulation_boundary` instead.
    """
    if is_deepspeed(module.trainer.strategy):
        return nullcontext()
    block = getattr(module.trainer.strategy, "block_backward_sync", None)
    return block() if block is not None else nullcontext()


def set_accumulation_boundary(module: L.LightningModule, is_last: bool) -> None:
    """Tell DeepSpeed which backward ends the optimizer step (call before each micro-batch's backward).

    Lightning runs the engine with ``gradient_accumulation_steps=1`` (it cannot know our micro-batching), so
    without this every backward is a boundary and DeepSpeed 0.19's ZeRO-2 keeps only the last micro-batch's
    gradient. No-op for other strategies.
    """
    engine = deepspeed_engine(module.trainer)
    if engine is not None:
        engine.set_gradient_accumulation_boundary(is_last)
