"""DeepSpeed ZeRO on CPU: the recipe's GPU strategy, runnable on a laptop and in CI.

Lightning's ``DeepSpeedStrategy`` refuses any accelerator but CUDA, yet DeepSpeed itself runs on CPU with its CPU
accelerator (``DS_ACCELERATOR=cpu``, gloo collectives). :class:`CPUDeepSpeedStrategy` lifts Lightning's two
CUDA-only checks, so the exact code path of a ZeRO-2 GPU run (engine, partitioned optimizer, micro-batch
accumulation, DeepSpeed checkpoints) can be debugged and tested without a GPU::

    openrs-pl fit --config configs/tiny_cpu.yaml --trainer.devices 2 --trainer.strategy deepspeed_stage_2_cpu

Names registered in Lightning's strategy registry when :mod:`openrs_pl` is imported by the CLI:
``deepspeed_stage_1_cpu``, ``deepspeed_stage_2_cpu`` and ``deepspeed_stage_3_cpu`` (ZeRO-3 trains, but the vLLM
weight sync refuses its partitioned parameters). Tested on CPU with precision ``32-true`` and ``bf16-mixed``
(``tests/grpo/test_deepspeed.py``).

Collectives go through gloo, as DDP's do. DeepSpeed's own shared-memory all-reduce op for CPUs is off by default: it is
JIT-compiled on first use (about 80 s, needs a C++ compiler; cached in ``~/.cache/torch_extensions``) and only speeds up
CPU runs, which are for debugging; ``shm_comm=True`` turns it on. DeepSpeed reads ``DS_ACCELERATOR`` once, when it first
picks its accelerator: the strategy sets it when it is constructed, which is before the CLI or the launcher imports
DeepSpeed; setting ``DS_ACCELERATOR=cpu`` in the shell works too.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, StrategyRegistry
from torch import nn
from torch.optim import Optimizer


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's ``DeepSpeedStrategy`` on CPU processes (gloo); every other argument is ``DeepSpeedStrategy``'s.

    Args:
        shm_comm: let DeepSpeed build and use its shared-memory all-reduce op (JIT-compiled on first use, about 80 s);
            off, its collectives fall back to ``torch.distributed`` with gloo.
    """

    def __init__(self, *args: Any, shm_comm: bool = False, **kwargs: Any) -> None:
        _use_deepspeed_cpu_accelerator()
        self.shm_comm = shm_comm
        kwargs.setdefault("process_group_backend", "gloo")
        super().__init__(*args, **kwargs)

    def setup_environment(self) -> None:
        # DeepSpeedStrategy's own version only adds the "CUDA GPUs only" check.
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        # DeepSpeedStrategy's version also checks that device indices equal local ranks; CPU devices have none.
        reset_seed()
        self.set_world_ranks()
        if not self.shm_comm:
            _skip_shm_comm_op()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(
        self, model: nn.Module, optimizer: Optimizer | None, lr_scheduler: Any = None
    ) -> tuple[Any, Optimizer]:
        import deepspeed

        # The parent passes the root device's index, which is None on CPU; DeepSpeed wants the local rank.
        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank),
            config=self.config,
            model=model,
            model_parameters=filter(lambda p: p.requires_grad, model.parameters()),
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, ds_optimizer


def _use_deepspeed_cpu_accelerator() -> None:
    """Make DeepSpeed pick its CPU accelerator, or say why it cannot (it has already picked another)."""
    requested = os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if requested != "cpu":
        raise ValueError(f"the CPU DeepSpeed strategy needs DS_ACCELERATOR=cpu, but it is set to {requested!r}")
    from deepspeed.accelerator import real_accelerator

    chosen = real_accelerator.ds_accelerator
    if chosen is not None and chosen.device_name() != "cpu":
        raise RuntimeError(
            f"DeepSpeed already uses its {chosen.device_name()!r} accelerator in this process: set DS_ACCELERATOR=cpu "
            "in the environment before starting Python to use the CPU DeepSpeed strategy"
        )


def _skip_shm_comm_op() -> None:
    """Mark DeepSpeed's shared-memory comm op as unbuildable in this process, so its backend does not JIT-build it."""
    import deepspeed.ops

    # DeepSpeed probes once per process which ops this machine can build and keeps that dict (edits persist); its
    # torch backend builds the shm op only if the dict says it can, else all-reduces with torch.distributed.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def register_cpu_deepspeed_strategies(registry: Any = StrategyRegistry) -> None:
    """Register ``deepspeed_stage_{1,2,3}_cpu`` (idempotent)."""
    for stage in (1, 2, 3):
        registry.register(
            f"deepspeed_stage_{stage}_cpu",
            CPUDeepSpeedStrategy,
            description=f"DeepSpeed ZeRO stage {stage} on CPU processes (debugging, CI)",
            override=True,
            stage=stage,
        )


register_cpu_deepspeed_strategies()
