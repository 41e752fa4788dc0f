"""The LightningCLI entry point: every shipped YAML parses, overrides work, a short fit logs every metric."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from openrs_pl.cli import OpenRSCLI, cli_main, main
from openrs_pl.data.datamodule import ProblemDataModule
from openrs_pl.grpo.module import GRPOModule

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
    assert cli.config.model.rewards, "a recipe needs rewards"
    assert cli.config.data.tokenizer == cli.config.model.model  # linked, named once


def test_recipe_batch_arithmetic() -> None:
    cfg = parse(["--config", "configs/openrs_exp2.yaml"]).config
    ranks = len(cfg.trainer.devices)
    completions = ranks * cfg.data.prompts_per_step * cfg.model.grpo.num_generations
    assert (ranks, completions, completions // cfg.model.grpo.num_generations) == (3, 72, 12)
    assert cfg.data.prompts_per_step * cfg.model.grpo.num_generations // cfg.model.grpo.micro_batch_size == 4
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
            "--model.model", str(tiny_model_dir), "--data.source", str(data),
            "--trainer.max_steps", "3", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger.init_args.save_dir", str(tmp_path),
            "--model.generation.max_completion_length", "12", "--data.prompts_per_step", "2",
            "--model.grpo.micro_batch_size", "6",
        ]
    )  # fmt: skip
    assert cli.trainer.global_step == 3
    metrics = pd.read_csv(Path(cli.trainer.logger.log_dir) / "metrics.csv")
    missing = [m for m in EXPECTED_METRICS if m not in metrics.columns]
    assert not missing, f"metrics not logged: {missing}"
    assert metrics["train/completions/max_length"].max() <= 12
    assert (Path(cli.trainer.log_dir) / "config.yaml").exists()


@pytest.mark.slow
def test_resume_from_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "every_step.yaml"
    text = Path("configs/tiny_cpu.yaml").read_text()
    text, n = re.subn(r"(ModelCheckpoint\n\s+init_args: \{every_n_train_steps:) \d+", r"\1 1", text)
    assert n == 1, "tiny_cpu.yaml should have one ModelCheckpoint with every_n_train_steps"
    config.write_text(text)
    common = [
        "fit", "--config", str(config), "--model.model", str(tiny_model_dir),
        "--data.source", str(write_problems(tmp_path / "train.jsonl")), "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger.init_args.save_dir", str(tmp_path), "--model.generation.max_completion_length", "8",
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
