"""``openrs-pl``: ``fit`` (GRPO training through LightningCLI) plus the commands in :data:`COMMANDS`.

openrs-pl fit --config configs/openrs_exp2.yaml --trainer.devices 3 --trainer.max_steps 50
openrs-pl fit --config configs/tiny_cpu.yaml --print_config
openrs-pl eval --model runs/x/hf_model --benchmarks '[aime24, amc23]'
openrs-pl export CHECKPOINT OUT_DIR        (a .ckpt file or a DeepSpeed checkpoint folder)
openrs-pl plan --config configs/openrs_exp3.yaml --gpu-memory 40
openrs-pl report runs/demo                 (HTML page + PNGs of a run's curves, samples and cost)

A mistake in the user's input (a config key, a value, a path, a data row) prints one line, ``openrs-pl CMD: error:
...``, and exits with status 2; ``--debug`` (anywhere on the command line) or ``OPENRS_DEBUG=1`` shows the full
traceback or parser message instead.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import types
import typing
from collections import abc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace, set_parsing_settings
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from openrs_pl import strategies  # noqa: F401  (registers the deepspeed_stage_*_cpu strategy names)
from openrs_pl.completions import CompletionsTable
from openrs_pl.config_errors import condense, config_error_message, yaml_problem
from openrs_pl.console import RunConsole, StepProgressBar, quiet_third_party
from openrs_pl.data.datamodule import ProblemDataModule
from openrs_pl.data.sources import ColumnMap, load_problems_with_stats
from openrs_pl.grpo.config import GRPOConfig
from openrs_pl.grpo.module import GRPOModule
from openrs_pl.health.checkpointing import resume_logger_version
from openrs_pl.rollout.callback import RolloutCallback

PROG = "openrs-pl"
DESCRIPTION = "GRPO fine-tuning of small reasoning LLMs (the Open-RS recipe) with PyTorch Lightning."
FIT_HELP = "train a policy with GRPO from a recipe YAML (LightningCLI: --config, --print_config, --help)"

# Commands besides `fit`: name -> ("module:function", one-line help). The function takes the arguments after
# the command name. Adding a command is one line here; `openrs-pl --help` lists them all.
COMMANDS: dict[str, tuple[str, str]] = {
    "eval": ("openrs_pl.eval.run:main", "zero-shot pass@k of a model on the paper's five math benchmarks"),
    "export": ("openrs_pl.cli:_export", "write a training checkpoint's policy as a Hugging Face folder"),
    "plan": ("openrs_pl.cli:_plan", "per-device memory plan of a recipe config, before renting the GPUs"),
    "report": ("openrs_pl.report:main", "an HTML page with a run's curves, sample completions and GPU-hour cost"),
}

EXIT_USAGE = 2  # a mistake in the command line, a config, a path or the data (argparse's convention)
DEBUG_FLAG = "--debug"
# Exceptions that mean "the user's input or environment is wrong" (a value, a path, a file, a hub id that
# transformers cannot load): shown as their first line, without a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


class _ParseFailed(SystemExit):
    """Raised by the parser instead of printing jsonargparse's multi-line message; ``main`` words it."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_USAGE)
        self.message = message


class OpenRSArgumentParser(LightningArgumentParser):
    """A LightningArgumentParser whose errors carry jsonargparse's message up to :class:`OpenRSCLI`."""

    def error(self, message: str, ex: Exception | None = None) -> Any:
        if not self.exit_on_error or debug_requested():  # jsonargparse probing alternatives, or --debug
            return super().error(message, ex)
        raise _ParseFailed(message)


class OpenRSCLI(LightningCLI):
    """LightningCLI with the rollout callback as a top-level ``rollout:`` group and shared values linked.

    Each setting is named once: the model path by ``model.name_or_path`` (the DataModule's tokenizer follows it),
    the sampling temperature and length limit by ``rollout.*`` (the module scores log-probs with them).
    """

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # validate/test/predict need steps GRPOModule does not have: only `fit` is offered.
        return {"fit": LightningCLI.subcommands()["fit"]}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(RolloutCallback, "rollout")
        parser.add_lightning_class_args(RunConsole, "console")
        parser.add_lightning_class_args(CompletionsTable, "completions")
        parser.link_arguments("model.name_or_path", "data.tokenizer")
        parser.link_arguments("rollout.temperature", "model.temperature")
        parser.link_arguments("rollout.max_completion_length", "model.max_completion_length")
        parser.link_arguments("rollout.overlap", "data.lookahead")

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        # Our step-counting bar replaces Lightning's default one, unless bars are off or the config names one.
        named = config.get("callbacks") or []
        named = [*callbacks, *(named if isinstance(named, list) else [named])]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in named):
            callbacks = [*callbacks, StepProgressBar()]
        return super()._instantiate_trainer(config, callbacks)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
            return
        args = list(sys.argv[1:] if args is None else args)
        # The parser that owns the options: the subcommand's (`fit ...`), or the only one (run=False).
        subparsers = getattr(self, "_subcommand_parsers", {})
        head, rest = (args[:1], args[1:]) if args and args[0] in subparsers else ([], args)
        owner = subparsers[head[0]] if head else parser
        problem = yaml_problem(rest)  # jsonargparse would name neither the file nor the line
        if problem:
            raise UsageError(problem)
        try:
            self.config = parser.parse_args([*head, *replace_lists_on_command_line(owner, rest)])
        except _ParseFailed as failed:
            if subparsers and not head:  # no known subcommand: there are no config keys to check
                raise UsageError(condense(failed.message)) from None
            raise UsageError(config_error_message(owner, rest, failed.message)) from None

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` before any model loads.

        Unlike LightningCLI, the checkpoint's hyperparameters do not replace the model's config (which silently
        trained the checkpoint's model when the command line named another one): the command line and the YAML
        decide the run; the checkpoint restores weights, optimizer state and progress, and a checkpoint of another
        model shape is refused when it is loaded.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path:
            check_checkpoint(str(ckpt_path))

    def before_instantiate_classes(self) -> None:
        # Batch arithmetic is checked on the parsed config, before anything is built or loaded.
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand == "fit":
            resume_logger_version(config)  # --ckpt_path continues in the checkpoint's version_N log folder
        fields = {k: v for k, v in vars(config.model.grpo).items() if not k.startswith("_")}
        GRPOConfig(**fields).check_batch(config.data.prompts_per_step * config.rollout.num_generations)

    def instantiate_classes(self) -> None:
        # The outputs and the data are checked before the models load (minutes for 1.5B parameters).
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_output_dirs(config.trainer)
        check_data(config.data)
        super().instantiate_classes()


class UsageError(ValueError):
    """A command line or config the parser rejected, already worded as one line."""


# ckpt_path values Lightning resolves itself.
_SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def check_checkpoint(path: str) -> None:
    """Raise :class:`UsageError` unless ``path`` is a Lightning checkpoint (a file, or a DeepSpeed folder)."""
    if path in _SPECIAL_CKPT_PATHS or path.startswith("registry:") or Path(path).is_dir():
        return
    if not Path(path).is_file():
        raise UsageError(f"--ckpt_path {path}: no such checkpoint file")
    try:  # mmap: only the header is read, whatever the checkpoint's size
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors alike for a file that is not one
        raise UsageError(
            f"--ckpt_path {path}: not a checkpoint written by `openrs-pl fit` ({type(exc).__name__})"
        ) from None


def check_output_dirs(trainer: Namespace) -> None:
    """Create the run's output folders now, so that an unusable one is reported before any model loads."""
    logger = trainer.get("logger")
    save_dir = logger.get("init_args", {}).get("save_dir") if isinstance(logger, Namespace) else None
    for flag, folder in (
        ("trainer.default_root_dir", trainer.get("default_root_dir")),
        ("trainer.logger.init_args.save_dir", save_dir),
    ):
        if not folder or "://" in str(folder):  # remote paths are the logger's business
            continue
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"--{flag} {folder}: cannot create the folder ({exc.strerror}); choose a writable one"
            ) from None
        if not os.access(folder, os.W_OK):
            raise UsageError(f"--{flag} {folder}: folder is not writable; choose a writable one")


def check_data(data: Namespace) -> None:
    """Load and check the training data as configured (before the models load: those take minutes at 1.5B).

    The data module loads it again in ``setup``; the rows are not kept here, and the log lines about skipped
    rows are written then, once.
    """
    columns = ColumnMap(**vars(data.columns)) if data.get("columns") else ColumnMap()
    logger = logging.getLogger("openrs_pl.data")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        load_problems_with_stats(data.source, data.split, columns, data.on_bad_row, data.dedupe)
    finally:
        logger.setLevel(level)


def replace_lists_on_command_line(parser: LightningArgumentParser, argv: list[str]) -> list[str]:
    """``argv`` with ``--key []`` put before every ``--key [...]`` of a list option, so the list replaces the file's.

    jsonargparse merges a list given on the command line into a config file's list of the same length entry by
    entry (a new ``{name: cosine}`` reward would inherit the ``kwargs`` of the file's reward at its index). A list
    of another length is taken as given, so an empty list first makes the command-line list replace the file's.
    ``--key+ VALUE`` still appends.

    >>> class P:
    ...     _option_string_actions = {"--model.rewards": type("A", (), {"_typehint": list[dict]})()}
    >>> replace_lists_on_command_line(P(), ["--config", "c.yaml", "--model.rewards", "[{name: cosine}]"])
    ['--config', 'c.yaml', '--model.rewards', '[]', '--model.rewards', '[{name: cosine}]']
    """
    out: list[str] = []
    for index, token in enumerate(argv):
        option, has_value, value = token.partition("=")
        if not has_value:
            value = argv[index + 1] if index + 1 < len(argv) else ""
        action = parser._option_string_actions.get(option) if token.startswith("--") else None
        if action is not None and _is_list_type(getattr(action, "_typehint", None)) and value.lstrip().startswith("["):
            out += [option, "[]"]
        out.append(token)
    return out


def _is_list_type(hint: Any) -> bool:
    """``list[X]``, ``Sequence[X]`` or a union holding one."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_is_list_type(member) for member in typing.get_args(hint))
    return typing.get_origin(hint) in (list, abc.Sequence, abc.MutableSequence)


def cli_main(args: list[str] | None = None, run: bool = True) -> OpenRSCLI:
    """``openrs-pl fit ...`` (or any LightningCLI invocation) as a function; ``args`` default to ``sys.argv``."""
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    return OpenRSCLI(
        GRPOModule,
        ProblemDataModule,
        parser_class=OpenRSArgumentParser,
        # allow_abbrev=False: a key is spelled out in full, as in a YAML (argparse would take --trainer.max_step).
        parser_kwargs={
            "prog": PROG,
            "description": DESCRIPTION,
            "allow_abbrev": False,
            "fit": {"description": FIT_HELP},
        },
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
        # `model.optim` is the one optimizer setting; LightningCLI's --optimizer would silently replace it.
        auto_configure_optimizers=False,
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


def _plan(argv: list[str]) -> int:
    from openrs_pl.plan import main as plan_main

    return plan_main(argv, OpenRSCLI)


def debug_requested() -> bool:
    """``--debug`` was given (``main`` turns it into ``OPENRS_DEBUG=1``) or ``OPENRS_DEBUG`` is set."""
    return os.environ.get("OPENRS_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def print_help() -> None:
    width = max(len(name) for name in ("fit", *COMMANDS))
    lines = [f"usage: {PROG} [{DEBUG_FLAG}] {{{','.join(['fit', *COMMANDS])}}} ...", "", DESCRIPTION, "", "commands:"]
    entries = [("fit", FIT_HELP), *((name, text) for name, (_, text) in COMMANDS.items())]
    lines += [f"  {name:<{width}}  {text}" for name, text in entries]
    lines += [
        "",
        "options:",
        f"  {DEBUG_FLAG}  show the full traceback of an error instead of its one-line message (or OPENRS_DEBUG=1)",
        "",
        f"Run `{PROG} COMMAND --help` for the options of a command.",
    ]
    print("\n".join(lines))


def command_function(name: str) -> Callable[[list[str]], Any]:
    module, _, function = COMMANDS[name][0].partition(":")
    return getattr(importlib.import_module(module), function)


def user_error_message(exc: BaseException) -> str | None:
    """The one line shown for ``exc``, or ``None`` when it is a bug (shown with its traceback)."""
    if isinstance(exc, UsageError):
        return f"{exc} (see {PROG} fit --help)"
    if isinstance(exc, RuntimeError) and "Error(s) in loading state_dict" in str(exc):
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        return (
            f"--ckpt_path holds another model's weights: {(lines[0] if lines else str(exc)).rstrip('.')}; "
            "resume with the model the checkpoint was trained from"
        )
    if isinstance(exc, USER_ERRORS):
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        return f"{lines[0]} ({DEBUG_FLAG} shows the traceback)"
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``openrs-pl`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if DEBUG_FLAG in argv:
        argv.remove(DEBUG_FLAG)
        os.environ["OPENRS_DEBUG"] = "1"
    quiet_third_party()
    command = argv[0] if argv else None
    if command in (None, "-h", "--help"):
        print_help()
        return 0 if command else EXIT_USAGE
    if command != "fit" and command not in COMMANDS and not command.startswith("-"):
        known = ", ".join(["fit", *COMMANDS])
        print(f"{PROG}: error: unknown command {command!r}; commands: {known} (see {PROG} --help)", file=sys.stderr)
        return EXIT_USAGE
    try:
        if command in COMMANDS:  # a command's own exit status, when it returns one or exits with one
            try:
                status = command_function(command)(argv[1:])
            except SystemExit as exited:  # argparse-style commands print their one line, then exit
                return exited.code if isinstance(exited.code, int) else int(exited.code is not None)
            return status if isinstance(status, int) else 0
        cli_main(argv)
    except Exception as exc:
        message = None if debug_requested() else user_error_message(exc)
        if message is None:
            raise
        print(f"{PROG} {command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
