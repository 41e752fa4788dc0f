"""openrs-pl vs TRL's ``GRPOTrainer`` on CPU: seconds per step, completion tokens/s and peak RSS, side by side.

Both trainers get the same tiny Qwen2 checkpoint, the same fixed prompts (bundled Open-RS problems whose chat
prompt is close to ``--prompt-len`` tokens, so every step costs about the same), the same reward functions (this
project's ``format`` and ``accuracy``, handed to TRL as plain callables), G, completions per step, completion
length, temperature, beta, learning rate and loss normalisation; fp32, one process, HF ``generate`` on both
(``rollout.engine: hf``), gradient checkpointing off on both (TRL's default is on) and the same torch thread count.

Each trainer runs in its own subprocess (``--worker``). Step time is ``on_step_begin``->``on_step_end``
(Lightning: ``on_train_batch_start``->``on_train_batch_end``); both exclude the data fetch, include generation,
rewards, log-probs, backward and the optimizer step. The first ``--warmup`` steps are dropped and the median of
the rest reported. Completion tokens and generation seconds come from a wrapper around the policy's
``generate`` (same code on both sides): a completion counts up to and including its first EOS. Peak RSS is the
trainer process's ``ru_maxrss``; ``peak_rss_tree_mib`` is the largest process of the worker's tree, from
``wait4``. Examples::

    python scripts/bench_vs_trl.py --out bench_vs_trl.json
    python scripts/bench_vs_trl.py --models B --max-completion-length 256 --steps 10 --threads 2
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

SIDES = ("ours", "trl")

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


@dataclass
class Settings:
    """Everything both trainers share; serialised to JSON for the workers."""

    steps: int = 10
    warmup: int = 2
    max_completion_length: int = 128
    num_generations: int = 4
    prompts_per_step: int = 2
    temperature: float = 0.7
    beta: float = 0.04
    lr: float = 1e-4
    loss_type: str = "bnpo"
    threads: int = 1
    seed: int = 42
    rewards: list[dict[str, Any]] = field(default_factory=lambda: [dict(r) for r in REWARDS])

    @property
    def completions_per_step(self) -> int:
        return self.num_generations * self.prompts_per_step


# ------------------------------------------------------------------------------------------------ measuring
class StepClock:
    """Wall-clock begin/end of every optimizer step."""

    def __init__(self) -> None:
        self.begins: list[float] = []
        self.ends: list[float] = []

    def begin(self) -> None:
        self.begins.append(time.perf_counter())

    def end(self) -> None:
        self.ends.append(time.perf_counter())


class GenerationMeter:
    """Wraps a model's ``generate`` to time it and count the prompt and completion tokens it handled."""

    def __init__(self, eos_token_id: int) -> None:
        self.eos_token_id = eos_token_id
        self.seconds: list[float] = []
        self.rows: list[int] = []
        self.completion_tokens: list[int] = []
        self.prompt_tokens: list[int] = []

    def install(self, model: Any) -> None:
        """Shadow ``model.generate`` with a timed version (an instance attribute, so both trainers call it)."""
        original = model.generate

        @functools.wraps(original)
        def timed_generate(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = original(*args, **kwargs)  # [B, P+L]
            self.record(kwargs["input_ids"], kwargs["attention_mask"], out, time.perf_counter() - start)
            return out

        model.generate = timed_generate

    def record(self, input_ids: Any, attention_mask: Any, output: Any, seconds: float) -> None:
        completion = output[:, input_ids.shape[1] :]  # [B, L]
        # A row's length runs up to and including its first EOS; generate pads finished rows after it.
        after_eos = (completion == self.eos_token_id).int().cumsum(dim=1) - (completion == self.eos_token_id).int()
        self.completion_tokens.append(int((after_eos == 0).sum()))
        # Ours passes each prompt once with num_return_sequences=G, TRL repeats it G times: count per output row.
        self.prompt_tokens.append(int(attention_mask.sum()) * completion.shape[0] // input_ids.shape[0])
        self.rows.append(int(completion.shape[0]))
        self.seconds.append(seconds)


def summarise(clock: StepClock, meter: GenerationMeter, warmup: int) -> dict[str, Any]:
    """Per-side numbers over the measured steps (one ``generate`` call per step on both trainers).

    >>> clock, meter = StepClock(), GenerationMeter(eos_token_id=0)
    >>> clock.begins, clock.ends = [0.0, 5.0, 7.0], [4.0, 6.0, 10.0]
    >>> meter.seconds, meter.rows = [3.0, 0.5, 2.0], [8, 8, 8]
    >>> meter.completion_tokens, meter.prompt_tokens = [800, 100, 300], [80, 80, 80]
    >>> s = summarise(clock, meter, warmup=1)
    >>> s["median_s_per_step"], s["completion_tok_per_s"], s["mean_completion_len"], s["generation_fraction"]
    (2.0, 100.0, 25.0, 0.625)
    """
    if len(clock.ends) != len(meter.seconds):
        raise RuntimeError(f"{len(clock.ends)} steps but {len(meter.seconds)} generate calls: expected one per step")
    if len(clock.ends) <= warmup:
        raise ValueError(f"only {len(clock.ends)} steps ran, none left after {warmup} warm-up steps")
    steps = [end - begin for begin, end in zip(clock.begins, clock.ends, strict=True)]
    measured = slice(warmup, None)
    step_seconds = sum(steps[measured])
    tokens = sum(meter.completion_tokens[measured])
    rows = sum(meter.rows[measured])
    gen_seconds = sum(meter.seconds[measured])
    intervals = [b - a for a, b in zip(clock.ends[:-1], clock.ends[1:], strict=True)][max(warmup - 1, 0) :]
    return {
        "measured_steps": len(steps[measured]),
        "median_s_per_step": round(statistics.median(steps[measured]), 4),
        "median_interval_s": round(statistics.median(intervals), 4) if intervals else None,
        "step_times": [round(s, 3) for s in steps],
        "completions_per_step": meter.rows[-1],
        "mean_completion_len": round(tokens / rows, 2),
        "mean_prompt_len": round(sum(meter.prompt_tokens[measured]) / rows, 2),
        "completion_tok_per_s": round(tokens / step_seconds, 2),
        "s_per_1k_completion_tokens": round(1000 * step_seconds / tokens, 4),
        "generation_tok_per_s": round(tokens / gen_seconds, 2),
        "median_generation_s": round(statistics.median(meter.seconds[measured]), 4),
        "generation_fraction": round(gen_seconds / step_seconds, 4),
    }


def peak_rss_mib(maxrss_kib: int) -> float:
    """``ru_maxrss`` (KiB on Linux) in MiB."""
    return round(maxrss_kib / 1024, 1)


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


# ------------------------------------------------------------------------------------------------- workers
def run_ours(settings: Settings, model_dir: Path, data_file: Path, work_dir: Path) -> tuple[StepClock, Any]:
    """Train with ``openrs_pl.cli`` (LightningCLI, the ``fit`` path minus the subcommand) and time it."""
    import lightning as L

    from openrs_pl.cli import cli_main

    config = {
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
        },
    }
    config_file = work_dir / "ours.json"
    config_file.write_text(json.dumps(config))
    cli = cli_main(["--config", str(config_file)], run=False)
    clock = StepClock()

    class ClockCallback(L.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            clock.begin()

        def on_train_batch_end(self, *args: Any) -> None:
            clock.end()

    # First in the list, so the step starts before the RolloutCallback generates.
    cli.trainer.callbacks.insert(0, ClockCallback())
    cli.model.configure_model()  # load the policy now (fit would, after the data) to wrap its generate
    meter = GenerationMeter(cli.model.tokenizer.eos_token_id)
    meter.install(cli.model.policy)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return clock, meter


def trl_reward_funcs(rewards: list[dict[str, Any]]) -> list[Callable[..., list[float | None]]]:
    """This project's registry rewards with their kwargs bound, named as TRL logs them."""
    from openrs_pl.rewards import REWARD_REGISTRY

    funcs = []
    for spec in rewards:
        func = functools.partial(REWARD_REGISTRY[spec["name"]], **spec["kwargs"])
        func.__name__ = spec["name"]  # type: ignore[attr-defined]  # TRL names reward columns by __name__
        funcs.append(func)
    return funcs


def run_trl(settings: Settings, model_dir: Path, data_file: Path, work_dir: Path) -> tuple[StepClock, Any]:
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
    clock = StepClock()

    class ClockCallback(TrainerCallback):
        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            clock.begin()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            clock.end()

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainer = GRPOTrainer(
        model=str(model_dir),
        reward_funcs=trl_reward_funcs(settings.rewards),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[ClockCallback()],
    )
    meter = GenerationMeter(tokenizer.eos_token_id)
    meter.install(trainer.model)
    trainer.train()
    return clock, meter


RUNNERS: dict[str, Callable[..., tuple[StepClock, Any]]] = {"ours": run_ours, "trl": run_trl}


def worker(side: str, spec_file: Path, out_file: Path) -> None:
    """One side's run in this process; writes its summary to ``out_file``."""
    spec = json.loads(spec_file.read_text())
    settings = Settings(**spec["settings"])
    import torch

    torch.set_num_threads(settings.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        clock, meter = RUNNERS[side](settings, Path(spec["model_dir"]), Path(spec["data_file"]), Path(tmp))
    summary = summarise(clock, meter, settings.warmup)
    summary |= {
        "startup_s": round(clock.begins[0] - start, 2),
        "wall_s": round(time.perf_counter() - start, 2),
        "threads": torch.get_num_threads(),
        "peak_rss_mib": peak_rss_mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
    }
    out_file.write_text(json.dumps(summary))


# -------------------------------------------------------------------------------------------------- parent
def run_side(side: str, spec_file: Path, out_file: Path, threads: int) -> dict[str, Any]:
    """Run one worker subprocess; its summary plus the peak RSS of its process tree (from ``wait4``)."""
    env = os.environ | {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [sys.executable, __file__, "--worker", side, "--spec", str(spec_file), "--side-out", str(out_file)]
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} worker failed with exit code {proc.returncode}: {' '.join(cmd)}")
    return json.loads(out_file.read_text()) | {"peak_rss_tree_mib": peak_rss_mib(usage.ru_maxrss)}


def ratios(ours: dict[str, Any], trl: dict[str, Any]) -> dict[str, float]:
    """ours / TRL for time, throughput and memory (< 1 is better for ours on time and memory, > 1 on tok/s).

    >>> ratios({"median_s_per_step": 1.0, "s_per_1k_completion_tokens": 2.0, "completion_tok_per_s": 500.0,
    ...         "generation_tok_per_s": 900.0, "peak_rss_mib": 800.0},
    ...        {"median_s_per_step": 2.0, "s_per_1k_completion_tokens": 4.0, "completion_tok_per_s": 250.0,
    ...         "generation_tok_per_s": 900.0, "peak_rss_mib": 1000.0})
    {'median_s_per_step': 0.5, 's_per_1k_completion_tokens': 0.5, 'completion_tok_per_s': 2.0, \
'generation_tok_per_s': 1.0, 'peak_rss_mib': 0.8}
    """
    keys = ("median_s_per_step", "s_per_1k_completion_tokens", "completion_tok_per_s", "generation_tok_per_s")
    return {k: round(ours[k] / trl[k], 3) for k in (*keys, "peak_rss_mib")}


def environment() -> dict[str, Any]:
    """Machine and library versions for the record."""
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
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "versions": {pkg: version(pkg) for pkg in ("torch", "transformers", "trl", "lightning", "accelerate")},
    }


def bench_model(name: str, settings: Settings, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Build model ``name``, its prompt set, run every side on it and compare."""
    from transformers import AutoTokenizer

    from openrs_pl.models.tiny import save_tiny_checkpoint

    model_dir = save_tiny_checkpoint(work / f"model_{name}", **MODEL_SHAPES[name])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = select_problems(tokenizer, args.num_prompts, args.prompt_len, args.prompt_len_tolerance)
    data_file = work / "problems.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec_file = work / f"spec_{name}.json"
    spec_file.write_text(
        json.dumps({"settings": asdict(settings), "model_dir": str(model_dir), "data_file": str(data_file)})
    )
    result: dict[str, Any] = {"model": name, "shape": MODEL_SHAPES[name], "params": _param_count(model_dir)}
    for side in args.sides:
        result[side] = run_side(side, spec_file, work / f"{name}_{side}.json", settings.threads)
    if all(side in result for side in SIDES):
        result["ratio_ours_over_trl"] = ratios(result["ours"], result["trl"])
    return result


def _param_count(model_dir: Path) -> int:
    from transformers import AutoModelForCausalLM

    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())


TABLE_ROWS = (
    ("median s/step", "median_s_per_step"),
    ("median interval s", "median_interval_s"),
    ("mean completion len", "mean_completion_len"),
    ("mean prompt len", "mean_prompt_len"),
    ("completions/step", "completions_per_step"),
    ("completion tok/s (step)", "completion_tok_per_s"),
    ("s per 1k compl. tokens", "s_per_1k_completion_tokens"),
    ("tok/s inside generate", "generation_tok_per_s"),
    ("generation fraction", "generation_fraction"),
    ("start-up s", "startup_s"),
    ("peak RSS MiB", "peak_rss_mib"),
    ("peak RSS tree MiB", "peak_rss_tree_mib"),
    ("torch threads", "threads"),
)


def format_table(result: dict[str, Any]) -> str:
    """One model's side-by-side table (plain text)."""
    sides = [s for s in SIDES if s in result]
    ratio = result.get("ratio_ours_over_trl", {})
    lines = [
        f"model {result['model']} ({result['params']:,} params)",
        f"{'':26}" + "".join(f"{s:>12}" for s in sides) + f"{'ours/trl':>10}",
    ]
    for label, key in TABLE_ROWS:
        cells = "".join(f"{result[s][key]!s:>12}" for s in sides)
        lines.append(f"{label:26}{cells}{ratio.get(key, ''):>10}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = Settings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="A,B", help="comma-separated subset of " + ",".join(MODEL_SHAPES))
    p.add_argument("--sides", default="ours,trl", help="comma-separated subset of ours,trl")
    p.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps per side, warm-up included")
    p.add_argument("--warmup", type=int, default=defaults.warmup, help="first steps left out of the statistics")
    p.add_argument("--max-completion-length", type=int, default=defaults.max_completion_length)
    p.add_argument("--num-generations", type=int, default=defaults.num_generations)
    p.add_argument("--prompts-per-step", type=int, default=defaults.prompts_per_step)
    p.add_argument("--loss-type", choices=("grpo", "bnpo", "dr_grpo"), default=defaults.loss_type)
    p.add_argument("--beta", type=float, default=defaults.beta)
    p.add_argument("--threads", type=int, default=defaults.threads, help="torch/OpenMP threads of each trainer")
    p.add_argument("--rewards", default="format,accuracy", help="comma-separated subset of format,accuracy")
    p.add_argument("--num-prompts", type=int, default=32, help="size of the fixed prompt set")
    p.add_argument("--prompt-len", type=int, default=64, help="target chat-prompt length in tokens")
    p.add_argument("--prompt-len-tolerance", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("bench_vs_trl.json"))
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--side-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.sides = [s for s in args.sides.split(",") if s]
    unknown = sorted(set(args.models) - set(MODEL_SHAPES)) + sorted(set(args.sides) - set(SIDES))
    if unknown:
        p.error(f"unknown model(s)/side(s): {unknown}")
    if args.steps <= args.warmup:
        p.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker, args.spec, args.side_out)
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
        threads=args.threads,
        rewards=[r for r in Settings().rewards if r["name"] in names],
    )
    report: dict[str, Any] = {"environment": environment(), "settings": asdict(settings), "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            result = bench_model(name, settings, args, Path(tmp))
            report["results"].append(result)
            print(format_table(result), flush=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
