"""Checkpoints you can trust: atomic writes, HF exports, a checkpoint on Ctrl-C / SIGTERM, resuming in place.

- :class:`AtomicCheckpointIO` (``trainer.plugins``): a checkpoint file is written to a temporary name in the same
  folder and renamed over the target, so a kill mid-write leaves the previous file (e.g. ``last.ckpt``) loadable.
- :class:`HFExport`: every N steps, the policy as a plain Hugging Face folder (``save_pretrained``; ~3.5 GB for the
  1.5B model in bf16, against ~25 GB for a ZeRO-2 checkpoint with its optimizer state), so old full checkpoints
  can be rotated away (``save_top_k``) while every evaluated step stays loadable by transformers and vLLM.
- :class:`InterruptCheckpoint`: the first Ctrl-C (SIGINT) or SIGTERM (a scheduler's pre-emption) lets the current
  optimizer step finish, writes a checkpoint and exits with the exact ``--ckpt_path`` command to continue; a
  second Ctrl-C aborts at once.
- :class:`ResumeInPlace`: ``--ckpt_path`` of a checkpoint under ``<logger>/version_N/checkpoints/`` continues in
  that ``version_N`` folder (CSV rows of the steps the checkpoint covers are kept, later ones dropped), and the
  "dataloader is not resumable" warning is silenced when the DataModule restores its own position.
"""

from __future__ import annotations

import csv
import logging
import os
import shlex
import shutil
import signal
import sys
import warnings
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from openrs_pl.export import HFExportable

log = logging.getLogger("openrs_pl.health")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``<name>.tmp`` next to the target, fsync, then ``os.replace``: all or nothing.

    Remote paths (``s3://`` ...) go through Lightning's own writer. DeepSpeed writes its checkpoint folders with
    its own engine (a new folder per step, so the previous one is never touched) and does not use this plugin.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(target.parent)


def _fsync_dir(path: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class HFExport(L.Callback):
    """Writes the policy (and tokenizer) as an HF folder ``<dirpath>/step<N>`` every ``every_n_train_steps``.

    Args:
        every_n_train_steps: export interval in optimizer steps (the recipes: 50, with each checkpoint).
        dirpath: parent folder; None = ``hf`` inside the logger's folder (next to ``checkpoints``).
        keep: newest exports to keep; None = all (each ~3.5 GB for the 1.5B policy in bf16).
    """

    def __init__(self, every_n_train_steps: int = 50, dirpath: str | None = None, keep: int | None = None) -> None:
        if every_n_train_steps < 1 or (keep is not None and keep < 1):
            raise ValueError("HFExport: every_n_train_steps and keep must be >= 1")
        self.every_n_train_steps = every_n_train_steps
        self.dirpath = dirpath
        self.keep = keep

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not isinstance(pl_module, HFExportable):  # on every rank, at the first step: no rank waits alone
            raise TypeError(f"HFExport needs a module with export_hf(out_dir); {type(pl_module).__name__} has none")
        step = trainer.global_step
        if step == 0 or step % self.every_n_train_steps:
            return
        # trainer.log_dir is a broadcast: every rank asks, only rank 0 writes (ZeRO-2 keeps full weights on each).
        root = Path(self.dirpath or Path(trainer.log_dir or trainer.default_root_dir) / "hf")
        if trainer.is_global_zero:
            self.export(trainer, pl_module, root)

    def export(self, trainer: L.Trainer, pl_module: HFExportable, root: Path) -> Path:
        """Write ``root/step<N>`` atomically (a temporary folder renamed into place) and prune old exports."""
        target = root / f"step{trainer.global_step}"
        tmp = root / f".{target.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        pl_module.export_hf(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        if self.keep is not None:
            exports = sorted((p for p in root.glob("step*") if p.name[4:].isdigit()), key=lambda p: int(p.name[4:]))
            for old in exports[: -self.keep]:
                shutil.rmtree(old)
        log.info("[checkpoint] HF export of step %d: %s", trainer.global_step, target)
        return target


class InterruptCheckpoint(L.Callback):
    """Ctrl-C or SIGTERM: finish the step, save ``<checkpoint dir>/interrupted-step<N>.ckpt``, say how to continue.

    Args:
        signals: names of the signals handled (default SIGINT and SIGTERM).
        exit_code: process exit status after the save (None = 128 + the signal number, the shell convention, so
            a scheduler sees the run did not finish).
    """

    def __init__(self, signals: tuple[str, ...] = ("SIGINT", "SIGTERM"), exit_code: int | None = None) -> None:
        self.signals = tuple(getattr(signal, name) for name in signals)
        self.exit_code = exit_code
        self.received: int | None = None
        self.saved_path: str | None = None
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for sig in self.signals:  # replaces Lightning's SIGTERM handler (registered at fit start) until the end
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: abort now
        # Lightning's own SIGTERM handler is not chained: it would raise SIGTERMException after this step.
        self.received = signum
        print(
            f"\n[checkpoint] {signal.Signals(signum).name}: finishing the current step, then saving a checkpoint"
            + (" (Ctrl-C again to abort without saving)" if signum == signal.SIGINT else ""),
            file=sys.stderr,
            flush=True,
        )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Any rank may have been signalled: all ranks must agree, since saving is collective.
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        dirpath = _checkpoint_dir(trainer)
        path = str(Path(dirpath) / f"interrupted-step{trainer.global_step}.ckpt")
        trainer.save_checkpoint(path)
        self.saved_path = path
        trainer.should_stop = True
        name = signal.Signals(self.received).name if self.received is not None else "signal on another rank"
        _rank_zero_print(
            f"[checkpoint] {name}: saved step {trainer.global_step} to {path}\n"
            f"[checkpoint] continue with: {continue_command(path)}"
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()
        if self.saved_path is not None:
            code = self.exit_code if self.exit_code is not None else 128 + (self.received or signal.SIGTERM)
            raise SystemExit(code)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


class ResumeInPlace(L.Callback):
    """With ``--ckpt_path``, continue in the checkpoint's own log folder, its CSV log intact.

    :func:`resume_logger_version` (called by the CLI before the logger exists) points the logger at the
    checkpoint's ``version_N`` when the checkpoint lies in ``<save_dir>/<name>/version_N/checkpoints/``
    (ModelCheckpoint's default folder) and no version is set. Lightning's CSV writer deletes an existing
    ``metrics.csv``; this callback keeps its rows for the steps the checkpoint covers and drops the rows of steps
    trained after it (lost with the kill), so each step appears once. It also silences Lightning's "dataloader is
    not resumable" warning when the DataModule restores its own position (``ProblemDataModule.state_dict``).
    """

    def __init__(self) -> None:
        self._fix_bar = False

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._fix_bar = True
        datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning at run time
        if datamodule is not None and type(datamodule).state_dict is not L.LightningDataModule.state_dict:
            warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable", category=UserWarning)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        """Resumed mid-epoch, Lightning's bar skips its epoch start: it counts from the restored batch but is sized,
        one step late, by the steps left (``5/2``). Size it once: batches done + batches left."""
        if not self._fix_bar:
            return
        self._fix_bar = False
        left = trainer.num_training_batches - idx
        if trainer.max_steps > 0:
            left = min(left, trainer.max_steps - trainer.global_step)
        bar = trainer.progress_bar_callback
        if isinstance(bar, TQDMProgressBar) and bar._train_progress_bar is not None:
            bar.train_progress_bar.reset(total=idx + left)
            bar.train_progress_bar.n = idx
        elif isinstance(bar, RichProgressBar) and bar.progress is not None:
            if bar.train_progress_bar_id is None:
                description = bar._get_train_description(trainer.current_epoch)
                bar.train_progress_bar_id = bar._add_task(idx + left, description)
            bar.progress.update(bar.train_progress_bar_id, total=idx + left, completed=idx)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if not isinstance(logger, CSVLogger):
                continue
            kept = Path(logger.log_dir) / KEPT_METRICS
            if not kept.is_file():
                continue
            with open(kept, newline="") as f:
                reader = csv.DictReader(f)
                rows = [r for r in reader if r.get("step", "").isdigit() and int(r["step"]) < trainer.global_step]
            writer = logger.experiment
            logger.save()
            writer.metrics_keys = sorted(set(writer.metrics_keys) | set(reader.fieldnames or []))
            with open(writer.metrics_file_path, "w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=writer.metrics_keys)
                out.writeheader()
                out.writerows(rows)
            kept.unlink()


KEPT_METRICS = "metrics.before-resume.csv"


def resume_logger_version(config: Any) -> None:
    """Point ``trainer.logger`` at the checkpoint's own ``version_N`` folder (a parsed ``fit`` config).

    Called by the CLI before the logger exists, for a ``ckpt_path`` in ``<save_dir>/<name>/version_N/checkpoints/``
    whose folder is the logger's; loggers with an explicit version are left alone. Lightning's CSV writer would
    delete that folder's ``metrics.csv``: it is moved to ``metrics.before-resume.csv``, which
    :class:`ResumeInPlace` merges back (the steps the checkpoint covers) when training starts.
    """
    version = version_of(config.ckpt_path) if getattr(config, "ckpt_path", None) else None
    if version is None:
        return
    run_dir = Path(config.ckpt_path).resolve().parent.parent
    loggers = config.trainer.logger
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        class_path, init_args = getattr(logger, "class_path", ""), getattr(logger, "init_args", None)
        if not class_path.endswith(("CSVLogger", "TensorBoardLogger")) or init_args is None:
            continue
        name = getattr(init_args, "name", "lightning_logs") or ""
        explicit = getattr(init_args, "version", None) is not None
        if explicit or Path(init_args.save_dir, name).resolve() != run_dir.parent:
            continue
        init_args.version = version
        # Both true of the folder, and both wrong about what follows: the rows are kept, the checkpoints resumed.
        for message in (r"Experiment logs directory .* will be deleted", r"Checkpoint directory .* exists and is not"):
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        metrics = run_dir / "metrics.csv"
        if class_path.endswith("CSVLogger") and metrics.is_file():
            os.replace(metrics, run_dir / KEPT_METRICS)


def version_of(ckpt_path: str | Path) -> int | None:
    """The ``N`` of ``.../version_N/checkpoints/<file>``, else None.

    >>> version_of("runs/demo/grpo/version_3/checkpoints/step50.ckpt")
    3
    >>> version_of("elsewhere/step50.ckpt") is None
    True
    """
    path = Path(ckpt_path)
    run = path.parent.parent.name
    if path.parent.name == "checkpoints" and run.startswith("version_") and run[8:].isdigit():
        return int(run[8:])
    return None


def continue_command(ckpt_path: str) -> str:
    """The command that resumes this run: the process's own arguments with ``--ckpt_path`` replaced."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if arg == "--ckpt_path":
            skip = True
            continue
        if not arg.startswith("--ckpt_path="):
            args.append(arg)
    if not args or args[0] != "fit":
        args = ["fit", "--config", "CONFIG.yaml", *args]
    return shlex.join(["openrs-pl", *args, "--ckpt_path", ckpt_path])


def _checkpoint_dir(trainer: L.Trainer) -> str:
    callback = trainer.checkpoint_callback
    dirpath = getattr(callback, "dirpath", None)
    if dirpath:
        return str(dirpath)
    return str(Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints")


@rank_zero_only
def _rank_zero_print(message: str) -> None:
    log.warning(message)
