"""``openrs-pl``: ``fit``/``validate`` through LightningCLI, plus ``eval`` (benchmarks) and ``export`` (HF folder).

openrs-pl fit --config configs/openrs_exp2.yaml --trainer.devices 3 --trainer.max_steps 50
openrs-pl fit --config configs/tiny_cpu.yaml --print_config
openrs-pl eval --model runs/x/hf_model --benchmarks aime24,amc23
openrs-pl export CHECKPOINT.ckpt OUT_DIR
"""

from __future__ import annotations

import sys
from typing import Any

from jsonargparse import set_docstring_parse_options
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from openrs_pl.data.datamodule import ProblemDataModule
from openrs_pl.grpo.config import GRPOConfig
from openrs_pl.grpo.module import GRPOModule
from openrs_pl.health.checkpointing import resume_logger_version
from openrs_pl.rollout.callback import RolloutCallback


class OpenRSCLI(LightningCLI):
    """LightningCLI with the rollout callback as a top-level ``rollout:`` group and shared values linked."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(RolloutCallback, "rollout")
        # The tokenizer is named once, by the policy.
        parser.link_arguments("model.model", "data.tokenizer")

    def before_instantiate_classes(self) -> None:
        # Batch arithmetic is checked on the parsed config, before any model is loaded.
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand == "fit":
            resume_logger_version(config)  # --ckpt_path continues in the checkpoint's version_N log folder
        grpo = config.model.grpo
        if grpo is not None:
            fields = {k: v for k, v in vars(grpo).items() if not k.startswith("_")}
            GRPOConfig(**fields).check_batch(config.data.prompts_per_step)


def cli_main(args: list[str] | None = None, run: bool = True) -> OpenRSCLI:
    set_docstring_parse_options(attribute_docstrings=True)
    return OpenRSCLI(
        GRPOModule,
        ProblemDataModule,
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def _export(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="openrs-pl export", description="Write a checkpoint's policy as an HF folder."
    )
    parser.add_argument("checkpoint")
    parser.add_argument("out_dir")
    a = parser.parse_args(argv)
    module = GRPOModule.load_from_checkpoint(a.checkpoint, map_location="cpu")
    print(f"exported to {module.export_hf(a.out_dir)}")


def main(argv: list[str] | None = None) -> Any:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "eval":
        from openrs_pl.eval.run import main as eval_main

        return eval_main(argv[1:])
    if argv and argv[0] == "export":
        return _export(argv[1:])
    cli_main(argv)
    return 0  # the console script's exit status (a returned object would make it 1)


if __name__ == "__main__":
    main()
