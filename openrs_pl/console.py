"""What ``openrs-pl fit`` prints: third-party noise filtered out, a start-up summary, one bar, an end summary.

:func:`quiet_third_party` removes output the user cannot act on (Lightning's advertising tips and device banner,
the ``LeafSpec`` deprecation inside Lightning, the manual-optimisation ModelCheckpoint essay, transformers'
"Loading weights" bars, DeepSpeed's CPU-detection line); every other warning still shows. Set
``OPENRS_PL_VERBOSE=1`` to keep everything.

:class:`StepProgressBar` counts optimizer steps out of ``max_steps`` with reward, accuracy, mean length, clipped
ratio, KL and ETA. :class:`RunConsole` prints the summaries, logs ``train/time/step`` and ``train/time/elapsed``,
and writes ``run.json`` next to the metrics (what ``openrs-pl report`` needs for the cost).
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from openrs_pl.cost import PAPER_USD_PER_GPU_HOUR, RunCost
from openrs_pl.rollout.callback import find_rollout_callback

# (regex on the warning message, why it is noise for our users)
_NOISY_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)",  # Lightning's own use of a deprecated torch API
    r"Using ModelCheckpoint with manual optimization",  # a 15-line example for a case GRPOModule handles
    r"LightningCLI's args parameter is intended",  # openrs-pl main() forwards sys.argv itself
    r".*does not have many workers which may be a bottleneck",  # prompts are a list of dicts: no loader work
)
# Names of the progress-bar fields and the logged metric each one shows (the first one present wins).
BAR_FIELDS: dict[str, tuple[str, ...]] = {
    "reward": ("train/reward/mean",),
    "acc": ("train/rewards/accuracy/mean", "train/rewards/cosine/mean"),
    "len": ("train/completions/mean_length",),
    "clip": ("train/completions/clipped_ratio",),
    "kl": ("train/kl",),
}


def quiet_third_party() -> None:
    """Filter library output a user cannot act on; a no-op when ``OPENRS_PL_VERBOSE=1``. Call before loading models."""
    if os.environ.get("OPENRS_PL_VERBOSE") == "1":
        return
    for pattern in _NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    # Tips, "GPU available: ...", "Seed set to": Lightning's info lines (its warnings go through `warnings`).
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    import torch

    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"  # what DeepSpeed picks anyway, without its warning
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    disable_progress_bars()


def run_log_dir(trainer: L.Trainer) -> str | None:
    """Where this run's logs go, as ``Trainer.log_dir`` computes it but without its broadcast.

    ``Trainer.log_dir`` is a collective (every rank must call it); this one is safe on rank 0 alone, which is
    where the console and the completions table write.
    """
    if not trainer.loggers:
        return trainer.default_root_dir
    logger = trainer.loggers[0]
    return logger.log_dir if isinstance(logger, (CSVLogger, TensorBoardLogger)) else logger.save_dir


def count_gpus(trainer: L.Trainer) -> int:
    """GPUs the run holds: the trainer's ranks, plus the dedicated vLLM GPU or a generator process's GPU outside the
    trainer's devices when there is one (0 on CPU)."""
    if trainer.accelerator.__class__.__name__ != "CUDAAccelerator":
        return 0
    rollout = find_rollout_callback(trainer)
    dedicated_vllm = rollout is not None and rollout.engine_name == "vllm" and rollout.vllm_config.mode == "dedicated"
    generator = rollout.process_config.device if rollout is not None and rollout.engine_name == "process" else None
    own_gpu = generator is not None and generator.startswith("cuda") and _gpu_index(generator) not in trainer.device_ids
    return trainer.world_size + int(dedicated_vllm or own_gpu)


def _gpu_index(device: str) -> int:
    """``cuda:3`` -> 3, ``cuda`` -> 0."""
    return int(device.partition(":")[2] or 0)


def bar_metrics(metrics: dict[str, Any]) -> dict[str, str]:
    """The bar's fields from the logged metrics, formatted; absent metrics are left out.

    >>> bar_metrics({"train/reward/mean": 1.5, "train/completions/mean_length": 20.25, "train/kl": 0.00123})
    {'reward': '1.500', 'len': '20.2', 'kl': '0.00123'}
    """
    out = {}
    for name, keys in BAR_FIELDS.items():
        key = next((k for k in keys if k in metrics), None)
        if key is None:
            continue
        value = float(metrics[key])
        out[name] = f"{value:.1f}" if name == "len" else f"{value:.3g}" if name == "kl" else f"{value:.3f}"
    return out


class StepProgressBar(TQDMProgressBar):
    """One bar over the whole run in optimizer steps (not reset per epoch), showing :data:`BAR_FIELDS` and ETA."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.max_steps if trainer.max_steps > 0 else None
        self.train_progress_bar = Tqdm(
            desc="GRPO", total=total, initial=trainer.global_step, unit="step", dynamic_ncols=True, leave=True,
            disable=self.is_disabled, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
        )  # fmt: skip

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        pass  # the bar spans epochs

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar = self.train_progress_bar
        if not bar.disable and trainer.global_step % self.refresh_rate == 0:
            bar.n = trainer.global_step
            bar.set_postfix(bar_metrics(trainer.callback_metrics), refresh=True)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return bar_metrics(trainer.callback_metrics)


class RunConsole(L.Callback):
    """Start-up and end summaries (with the cost), per-step wall time, and ``run.json`` for ``openrs-pl report``.

    Args:
        usd_per_gpu_hour: price of a GPU-hour for the cost lines (default: the paper's $42 / (4 A40 x 24 h)).
    """

    def __init__(self, usd_per_gpu_hour: float = PAPER_USD_PER_GPU_HOUR) -> None:
        super().__init__()
        if usd_per_gpu_hour < 0:
            raise ValueError(f"console.usd_per_gpu_hour must be >= 0, got {usd_per_gpu_hour}")
        self.usd_per_gpu_hour = usd_per_gpu_hour
        self._start = 0.0
        self._last_step_end = 0.0
        self._start_step = 0
        self._history: list[dict[str, float]] = []  # the bar's metrics at every step, for the end summary

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            print("\n".join(startup_lines(trainer, pl_module)), flush=True)
            self._write_run_info(trainer, pl_module)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last_step_end = time.perf_counter()
        self._start_step = trainer.global_step

    def _write_run_info(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = run_log_dir(trainer)
        if log_dir is None:
            return
        info = {
            "model": _model_name(pl_module),
            "gpus": count_gpus(trainer),
            "world_size": trainer.world_size,
            "max_steps": trainer.max_steps,
            "usd_per_gpu_hour": self.usd_per_gpu_hour,
            "started_unix": time.time(),
        }
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        (Path(log_dir) / "run.json").write_text(json.dumps(info, indent=1) + "\n")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        # Between two batch ends: generation + scoring + training + sync + data, i.e. the whole step.
        pl_module.log("train/time/step", now - self._last_step_end, on_step=True, on_epoch=False)
        pl_module.log("train/time/elapsed", now - self._start, on_step=True, on_epoch=False)
        self._last_step_end = now
        keys = {k for keys in BAR_FIELDS.values() for k in keys}
        self._history.append({k: float(v) for k, v in trainer.callback_metrics.items() if k in keys})

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        cost = RunCost(
            gpus=count_gpus(trainer),
            steps_done=trainer.global_step - self._start_step,
            max_steps=max(trainer.max_steps, trainer.global_step) - self._start_step,
            elapsed_s=time.perf_counter() - self._start,
            usd_per_gpu_hour=self.usd_per_gpu_hour,
        )
        first, last = window_means(self._history[:10]), window_means(self._history[-10:])
        print("\n".join(end_lines(trainer, bar_metrics(first), bar_metrics(last), cost)), flush=True)


def startup_lines(trainer: L.Trainer, pl_module: L.LightningModule) -> list[str]:
    """The start-up summary: what is trained, on what, with which batch, for how long, and where output goes."""
    policy = getattr(pl_module, "policy", pl_module)
    params = sum(p.numel() for p in policy.parameters())
    rollout = find_rollout_callback(trainer)
    g = rollout.num_generations if rollout is not None else 1
    datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning at run time
    prompts = getattr(datamodule, "prompts_per_step", None) if datamodule is not None else None
    ranks = trainer.world_size
    batch = f"{ranks} ranks x {prompts} prompts x {g} completions = {ranks * prompts * g}" if prompts else "?"
    engine = rollout.engine_name if rollout is not None else "-"
    ckpt = trainer.checkpoint_callback
    rows = [
        ("model", f"{_model_name(pl_module)} ({_count(params)} parameters)"),
        ("devices", f"{trainer.num_devices} x {trainer.accelerator.__class__.__name__.removesuffix('Accelerator')}"
         f" x {trainer.num_nodes} node(s), strategy {trainer.strategy.__class__.__name__}"),
        ("batch / step", batch),
        ("steps", f"{trainer.max_steps} optimizer steps" if trainer.max_steps > 0 else f"{trainer.max_epochs} epochs"),
        ("rollout engine", str(engine)),
        ("logs", ", ".join(_logger_place(lg) for lg in trainer.loggers) or "none"),
        ("checkpoints", str(ckpt.dirpath) if isinstance(ckpt, ModelCheckpoint) and ckpt.dirpath else "none"),
    ]  # fmt: skip
    return ["openrs-pl fit"] + [f"  {k:<15} {v}" for k, v in rows]


def window_means(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per metric, the mean over the rows that have it.

    >>> window_means([{"a": 1.0}, {"a": 2.0, "b": 4.0}])
    {'a': 1.5, 'b': 4.0}
    """
    keys = dict.fromkeys(k for row in rows for k in row)
    return {k: sum(r[k] for r in rows if k in r) / sum(k in r for r in rows) for k in keys}


def end_lines(trainer: L.Trainer, first: dict[str, str], last: dict[str, str], cost: RunCost) -> list[str]:
    """The end summary: steps and time, the bar's fields over the first and last 10 steps, cost, where to look."""
    per_step = cost.elapsed_s / cost.steps_done if cost.steps_done else 0.0
    lines = [
        f"done: {trainer.global_step} steps in {cost.elapsed_s:.0f} s ({per_step:.2f} s/step)",
        "  first 10 -> last 10 steps: " + "  ".join(f"{k} {first.get(k, '-')} -> {v}" for k, v in last.items()),
    ]
    lines += ["  " + line for line in cost.lines()]
    ckpt = trainer.checkpoint_callback
    if isinstance(ckpt, ModelCheckpoint) and ckpt.dirpath:
        lines.append(f"  checkpoints: {ckpt.dirpath}")
    log_dir = run_log_dir(trainer)
    if log_dir is not None:
        lines.append(f"  plots: openrs-pl report {log_dir}")
    return lines


def _model_name(pl_module: L.LightningModule) -> str:
    return str(getattr(pl_module, "name_or_path", type(pl_module).__name__))


def _count(n: int) -> str:
    """
    >>> _count(1_543_714_304), _count(571_392)
    ('1.54B', '0.57M')
    """
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def _logger_place(logger: Any) -> str:
    name = type(logger).__name__.removesuffix("Logger")
    where = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
    return f"{name} {where}" if where else name
