"""``openrs-pl``: ``fit``/``validate`` through LightningCLI, plus ``eval`` (benchmarks) and ``export`` (HF folder).

openrs-pl fit --config configs/openrs_exp2.yaml --trainer.devices 3 --trainer.max_steps 50
openrs-pl fit --config configs/tiny_cpu.yaml --print_config
openrs-pl eval --model runs/x/hf_model --benchmarks aime24,amc23
openrs-pl export CHECKPOINT OUT_DIR        (a .ckpt file or a DeepSpeed checkpoint folder)
openrs-pl plan --config configs/openrs_exp3.yaml --gpu-memory 40
"""

from __future__ import annotations

import sys

from jsonargparse import set_docstring_parse_options
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from openrs_pl import strategies  # noqa: F401  (registers the deepspeed_stage_*_cpu strategy names)
from openrs_pl.data.datamodule import ProblemDataModule
from openrs_pl.grpo.config import GRPOConfig
from openrs_pl.grpo.module import GRPOModule
from openrs_pl.rollout.callback import RolloutCallback


class OpenRSCLI(LightningCLI):
    """LightningCLI with the rollout callback as a top-level ``rollout:`` group and shared values linked.

    Each setting is named once: the model path by ``model.name_or_path`` (the DataModule's tokenizer follows it),
    the sampling temperature and length limit by ``rollout.*`` (the module scores log-probs with them).
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(RolloutCallback, "rollout")
        parser.link_arguments("model.name_or_path", "data.tokenizer")
        parser.link_arguments("rollout.temperature", "model.temperature")
        parser.link_arguments("rollout.max_completion_length", "model.max_completion_length")

    def before_instantiate_classes(self) -> None:
        # Batch arithmetic is checked on the parsed config, before anything is built or loaded.
        config = self.config[self.subcommand] if self.subcommand else self.config
        fields = {k: v for k, v in vars(config.model.grpo).items() if not k.startswith("_")}
        GRPOConfig(**fields).check_batch(config.data.prompts_per_step * config.rollout.num_generations)


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


def _export(argv: list[str]) -> int:
    from jsonargparse import auto_cli

    from openrs_pl.export import ExportError, export_checkpoint

    try:
        out = auto_cli(export_checkpoint, args=argv, prog="openrs-pl export")
    except ExportError as err:
        print(f"openrs-pl export: error: {err}", file=sys.stderr)
        return 1
    print(f"exported to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``openrs-pl`` console script; its return value is the process's exit status (0 = success)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "eval":
        from openrs_pl.eval.run import main as eval_main

        eval_main(argv[1:])
        return 0
    if argv and argv[0] == "export":
        return _export(argv[1:])
    if argv and argv[0] == "plan":
        from openrs_pl.plan import main as plan_main

        return plan_main(argv[1:], OpenRSCLI)
    cli_main(argv)  # raises on failure (non-zero exit through the traceback or LightningCLI's SystemExit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
