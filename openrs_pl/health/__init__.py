"""Run health: the :class:`TrainingHealth` monitor and trustworthy checkpoints (atomic writes, HF exports,
a checkpoint on Ctrl-C / SIGTERM, resuming into the same log folder)."""

from openrs_pl.health.checkpointing import AtomicCheckpointIO, HFExport, InterruptCheckpoint, ResumeInPlace
from openrs_pl.health.monitor import TrainingHealth, step_allowed

__all__ = ["AtomicCheckpointIO", "HFExport", "InterruptCheckpoint", "ResumeInPlace", "TrainingHealth", "step_allowed"]
