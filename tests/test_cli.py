"""The LightningCLI entry point: every shipped YAML parses, overrides work, a short fit logs every metric."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from openrs_pl.cli import OpenRSCLI, cli_main, main
from openrs_pl.data.datamodule import ProblemDataModule
from openrs_pl.grpo.module import GRPOModule
from openrs_pl.rollout.process_engine import ProcessEngineConfig

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))

EXPECTED_METRICS = [
    "train/loss", "train/policy_loss", "train/kl", "train/clip_ratio", "train/clip_ratio/low", "train/clip_ratio/high",
    "train/grad_norm", "train/lr", "train/reward/mean", "train/reward/std", "train/rewards/format/mean",
    "train/rewards/format/std", "train/rewards/accuracy/mean", "train/rewards/accuracy/std",
    "train/frac_reward_zero_std", "train/completions/mean_length", "train/completions/min_length",
    "train/completions/max_length", "train/completions/clipped_ratio", "train/time/generation",
]  # fmt: skip


class ParseOnlyCLI(OpenRSCLI):
    """Parses and validates a config (types, keys, batch arithmetic) without building models or a trainer."""

    def instantiate_classes(self) -> None:
        pass


def parse(args: list[str]) -> ParseOnlyCLI:
    return ParseOnlyCLI(GRPOModule, ProblemDataModule, args=args, run=False)


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_config_parses(config: Path) -> None:
    cli = parse(["--config", str(config)])
    assert cli.config.rollout.rewards, "a recipe needs rewards"
    # Named once, linked to the side that also needs them.
    assert cli.config.data.tokenizer == cli.config.model.name_or_path
    assert cli.config.model.temperature == cli.config.rollout.temperature
    assert cli.config.model.max_completion_length == cli.config.rollout.max_completion_length


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_config_builds_its_components(config: Path, tiny_model_dir: Path, monkeypatch) -> None:
    """Module, DataModule, rollout callback and the trainer's callbacks are built from each YAML; no weights load."""

    def no_loading(*args, **kwargs):
        raise AssertionError("building the config must not load a model")

    monkeypatch.setattr("openrs_pl.grpo.module.AutoModelForCausalLM.from_pretrained", no_loading)
    monkeypatch.setattr("openrs_pl.grpo.module.AutoTokenizer.from_pretrained", no_loading)
    # The recipes' hub id is resolved at construction; offline it would be refused (not cached), so the hub is
    # taken as reachable here (resolving a reachable hub id makes no request).
    monkeypatch.setattr("openrs_pl.hub.hub_offline_reason", lambda: None)
    # The demo config names a folder that `python -m openrs_pl.demo` writes first.
    local = ["--model.name_or_path", str(tiny_model_dir)] if config.name == "tiny_cpu.yaml" else []
    cli = parse(["--config", str(config), *local])
    init = cli.parser.instantiate_classes(cli.config)
    assert isinstance(init.model, GRPOModule) and isinstance(init.data, ProblemDataModule)
    rollout = init.rollout
    assert (init.model.temperature, init.model.max_completion_length) == (
        rollout.sampling.temperature,
        rollout.sampling.max_tokens,
    )
    assert rollout.num_generations == 6 and rollout.reward_set.names[0] == "format"


def test_linked_values_follow_the_rollout_group() -> None:
    cfg = parse(["--config", "configs/tiny_cpu.yaml", "--rollout.temperature", "0.9"]).config
    assert (cfg.model.temperature, cfg.model.max_completion_length) == (0.9, 40)
    with pytest.raises(SystemExit):  # a linked target is not a setting of its own
        parse(["--config", "configs/tiny_cpu.yaml", "--model.temperature", "0.9"])


def test_fit_help_documents_every_field_without_importing_vllm() -> None:
    """`openrs-pl fit --help` (the installed console script) lists every config field with its docstring.

    The vLLM fields are documented without importing vLLM: ``-X importtime`` (``PYTHONPROFILEIMPORTTIME``) lists
    every module the process imported on stderr.
    """
    import os
    import subprocess

    from openrs_pl.grpo.config import GRPOConfig, OptimConfig
    from openrs_pl.rollout.vllm_config import VLLMConfig

    script = str(Path(sys.executable).with_name("openrs-pl"))  # the installed console script
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1]), "PYTHONPROFILEIMPORTTIME": "1"}
    out = subprocess.run([script, "fit", "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    imported = re.findall(r"^import time:.*\|\s*(\S+)$", out.stderr, flags=re.MULTILINE)
    assert "openrs_pl.rollout.vllm_config" in imported, "PYTHONPROFILEIMPORTTIME lists the imports"
    assert not [m for m in imported if m.split(".")[0] == "vllm"], "fit --help imported vLLM"
    text = " ".join(out.stdout.split())  # argparse wraps lines
    groups = (
        ("model.grpo", GRPOConfig), ("model.optim", OptimConfig), ("rollout.vllm", VLLMConfig),
        ("rollout.process", ProcessEngineConfig),
    )  # fmt: skip
    for group, cls in groups:
        for f in fields(cls):
            assert f"--{group}.{f.name} " in text, f"--{group}.{f.name} missing from fit --help"
    rollout_args = ["rewards", "num_generations", "temperature", "top_p", "top_k", "max_completion_length"]
    for name in [*rollout_args, "scale_rewards", "engine", "hf_batch_size", "seed"]:
        assert f"--rollout.{name} " in text, name
    # Field docstrings, not just names.
    assert "KL coefficient against the frozen reference (k3 estimator)." in text
    assert "Floor of the cosine decay, as a fraction of lr" in text
    assert "completions sampled per prompt (the group size G, at least 2)" in text
    assert "Fraction of device memory vLLM may use (weights + KV cache)." in text
    assert "Weight-push backend." in text


def test_the_process_engines_vllm_generator_is_sized_by_the_rollouts_one_vllm_config(tiny_model_dir: Path) -> None:
    """``rollout.process.generator: vllm`` parses; the generator's vLLM reads ``rollout.vllm``, not a copy of it."""
    args = ["--config", "configs/tiny_cpu.yaml", "--model.name_or_path", str(tiny_model_dir)]
    vllm = ["--rollout.engine", "process", "--rollout.process.generator", "vllm", "--rollout.vllm.max_model_len", "256"]
    cli = parse([*args, *vllm])
    rollout = cli.parser.instantiate_classes(cli.config).rollout
    assert (rollout.process_config.generator, rollout.vllm_config.max_model_len) == ("vllm", 256)
    assert "vllm" not in {f.name for f in fields(ProcessEngineConfig)}, "each setting named once"
    with pytest.raises(SystemExit):
        parse([*args, "--rollout.process.generator", "tgi"])


def test_bad_data_fails_before_any_model_loads(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the data was checked")

    monkeypatch.setattr("openrs_pl.grpo.module.AutoModelForCausalLM.from_pretrained", no_loading)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "What is 1 + 1?", "answer": "2"}\n')  # no `problem` column
    with pytest.raises(ValueError, match="problem"):
        cli_main(
            [
                "fit", "--config", "configs/tiny_cpu.yaml", "--model.name_or_path", str(tiny_model_dir),
                "--data.source", str(bad), "--trainer.default_root_dir", str(tmp_path),
                "--trainer.logger", "false", "--trainer.callbacks", "[]",
            ]
        )  # fmt: skip


def test_recipe_batch_arithmetic() -> None:
    cfg = parse(["--config", "configs/openrs_exp2.yaml"]).config
    ranks = len(cfg.trainer.devices)
    completions = ranks * cfg.data.prompts_per_step * cfg.rollout.num_generations
    assert (ranks, completions, completions // cfg.rollout.num_generations) == (3, 72, 12)
    assert cfg.data.prompts_per_step * cfg.rollout.num_generations // cfg.model.grpo.micro_batch_size == 4
    assert cfg.trainer.strategy == "deepspeed_stage_2" and cfg.rollout.engine == "vllm"


def test_trainer_overrides_from_the_command_line() -> None:
    cfg = parse(["--config", "configs/openrs_exp2.yaml", "--trainer.devices", "2", "--trainer.strategy", "ddp"]).config
    assert (str(cfg.trainer.devices), cfg.trainer.strategy) == ("2", "ddp")


def test_typo_in_a_key_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path("configs/tiny_cpu.yaml").read_text().replace("num_generations:", "num_generation:"))
    with pytest.raises(SystemExit):
        parse(["--config", str(bad)])


def test_indivisible_batch_is_rejected_before_loading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not divisible"):
        parse(["--config", "configs/tiny_cpu.yaml", "--model.grpo.micro_batch_size", "7"])
    with pytest.raises(ValueError, match="not divisible"):  # G is the rollout's: 16 prompts x 5 = 80, not 48k
        parse(["--config", "configs/tiny_cpu.yaml", "--rollout.num_generations", "5"])


def write_problems(path: Path, n: int = 16) -> Path:
    rows = [{"problem": f"What is {a} + {a + 1}?", "answer": str(2 * a + 1)} for a in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_short_fit_logs_every_metric(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_problems(tmp_path / "train.jsonl")
    cli = cli_main(
        [
            "fit", "--config", "configs/tiny_cpu.yaml",
            "--model.name_or_path", str(tiny_model_dir), "--data.source", str(data),
            "--trainer.max_steps", "3", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger.init_args.save_dir", str(tmp_path),
            "--rollout.max_completion_length", "12", "--data.prompts_per_step", "2",
            "--model.grpo.micro_batch_size", "6",
        ]
    )  # fmt: skip
    assert cli.trainer.global_step == 3
    metrics = pd.read_csv(Path(cli.trainer.logger.log_dir) / "metrics.csv")
    missing = [m for m in EXPECTED_METRICS if m not in metrics.columns]
    assert not missing, f"metrics not logged: {missing}"
    assert metrics["train/completions/max_length"].max() <= 12
    assert (Path(cli.trainer.log_dir) / "config.yaml").exists()

    def col(name: str) -> list[float]:
        return metrics[name].dropna().tolist()

    # Values, not just names. The total reward is the weighted sum of the logged per-function means
    # (tiny_cpu.yaml: format x 1.0 + accuracy x 2.0).
    format_mean, accuracy_mean = col("train/rewards/format/mean"), col("train/rewards/accuracy/mean")
    expected = [f + 2 * a for f, a in zip(format_mean, accuracy_mean, strict=True)]
    assert col("train/reward/mean") == pytest.approx(expected, abs=1e-6)
    # Cosine schedule, lr 1e-4 to min_lr_rate 0.1 over 3 steps, no warm-up (round(0.05 x 3) = 0 steps). The
    # logged value is read after the scheduler's step, i.e. it is the next step's lr.
    schedule = [1e-4, 1e-5 + 9e-5 * 0.75, 1e-5 + 9e-5 * 0.25, 1e-5]
    assert col("train/lr") in (pytest.approx(schedule[:3], rel=1e-6), pytest.approx(schedule[1:], rel=1e-6))
    # Before the first update the policy is the reference (same checkpoint), so the KL is exactly 0. (A random
    # tiny model earns no reward here, hence no gradient: tests/grpo/test_module_wiring.py checks KL > 0.)
    assert col("train/kl")[0] == 0.0
    for name in ("train/completions/clipped_ratio", "train/frac_reward_zero_std"):
        assert all(0.0 <= v <= 1.0 for v in col(name)), name
    lengths = zip(
        col("train/completions/min_length"),
        col("train/completions/mean_length"),
        col("train/completions/max_length"),
        strict=True,
    )
    assert all(1 <= lo <= mean <= hi <= 12 for lo, mean, hi in lengths)


@pytest.mark.slow
def test_resume_from_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "every_step.yaml"
    text = Path("configs/tiny_cpu.yaml").read_text()
    text, n = re.subn(r"(ModelCheckpoint\n\s+init_args: \{every_n_train_steps:) \d+", r"\1 1", text)
    assert n == 1, "tiny_cpu.yaml should have one ModelCheckpoint with every_n_train_steps"
    config.write_text(text)
    common = [
        "fit", "--config", str(config), "--model.name_or_path", str(tiny_model_dir),
        "--data.source", str(write_problems(tmp_path / "train.jsonl")), "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger.init_args.save_dir", str(tmp_path), "--rollout.max_completion_length", "8",
        "--data.prompts_per_step", "2", "--model.grpo.micro_batch_size", "12",
    ]  # fmt: skip
    first = cli_main([*common, "--trainer.max_steps", "2"])
    ckpt = Path(first.trainer.checkpoint_callback.dirpath) / "step2.ckpt"
    assert ckpt.exists()
    resumed = cli_main([*common, "--trainer.max_steps", "3", "--ckpt_path", str(ckpt)])
    assert resumed.trainer.global_step == 3
    # The optimizer and schedule continued rather than restarting: AdamW has state for step 3.
    state = resumed.trainer.optimizers[0].state_dict()["state"]
    assert int(next(iter(state.values()))["step"]) == 3

    # `openrs-pl export` turns a checkpoint into a plain HF folder with the trained weights.
    main(["export", str(ckpt), str(tmp_path / "hf")])
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    trained = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    for name, tensor in exported.state_dict().items():
        assert torch.equal(tensor, trained[f"policy.{name}"]), name


def test_print_config_shows_the_resolved_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/openrs_exp3.yaml", "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "max_len: 3584" in printed and "deepspeed_stage_2" in printed and "num_generations: 6" in printed
