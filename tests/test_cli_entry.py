"""The ``openrs-pl`` entry point: its help, its commands, list overrides, ``--debug``, and no deprecated API."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from openrs_pl.cli import COMMANDS, DESCRIPTION, OpenRSCLI, cli_main, command_function, main
from openrs_pl.data.datamodule import ProblemDataModule
from openrs_pl.grpo.module import GRPOModule

ROOT = Path(__file__).parents[1]
CONSOLE_SCRIPT = Path(sys.executable).with_name("openrs-pl")
# Where the reward list lives (the rollout group may own it): whichever key the fit parser has.
REWARD_KEYS = ("model.rewards", "rollout.rewards")


def test_help_is_titled_for_openrs_pl_and_lists_every_working_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: openrs-pl") and DESCRIPTION in out
    assert "Lightning Trainer command line tool" not in out
    for name in ["fit", *COMMANDS]:
        assert f"\n  {name} " in out
    for broken in ("validate", "test", "predict"):
        assert broken not in out


@pytest.mark.parametrize("name", ["validate", "test", "predict"])
def test_lightning_subcommands_without_steps_are_not_offered(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([name, "--config", "configs/tiny_cpu.yaml"]) == 2
    assert f"unknown command '{name}'" in capsys.readouterr().err


def test_the_lightning_parser_offers_only_fit() -> None:
    with pytest.raises(ValueError, match="validate"):  # jsonargparse: not one of the subcommands
        cli_main(["validate", "--config", "configs/tiny_cpu.yaml"])


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_listed_command_answers_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert callable(command_function(name))
    assert main([name, "--help"]) == 0  # the command's own SystemExit becomes main's return status
    assert "usage:" in capsys.readouterr().out


class ParseOnlyCLI(OpenRSCLI):
    def instantiate_classes(self) -> None:
        pass


def parse(*args: str) -> ParseOnlyCLI:
    return ParseOnlyCLI(GRPOModule, ProblemDataModule, args=["--config", "configs/tiny_cpu.yaml", *args], run=False)


def rewards_key() -> str:
    """The one config key that holds the reward list (the test follows it if it moves to another group)."""
    config = parse().config
    keys = [k for k in REWARD_KEYS if config.get(k) is not None]
    assert len(keys) == 1, keys
    return keys[0]


def parsed_rewards(*args: str) -> list[dict]:
    """The reward list after ``configs/tiny_cpu.yaml`` (format 1.0, accuracy 2.0 with kwargs) and ``args``."""
    return [dict(vars(spec)) for spec in parse(*args).config[rewards_key()]]


def test_a_reward_list_on_the_command_line_replaces_the_yamls() -> None:
    key = rewards_key()
    given = "[{name: format}, {name: cosine, weight: 2.0}]"
    parsed = [(r["name"], r["weight"], r["kwargs"]) for r in parsed_rewards(f"--{key}", given)]
    # not the YAML accuracy entry's {gold_field: answer}
    assert parsed == [("format", 1.0, {}), ("cosine", 2.0, {})]
    assert parsed_rewards(f"--{key}={given}")[1]["kwargs"] == {}
    # `+` still appends to the YAML's list.
    assert [r["name"] for r in parsed_rewards(f"--{key}+", "{name: cosine}")] == ["format", "accuracy", "cosine"]


def test_start_up_uses_no_deprecated_jsonargparse_api() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SystemExit):
            cli_main(["fit", "--config", "configs/tiny_cpu.yaml", "--print_config"])
    ours = [w for w in caught if "openrs_pl" in w.filename or "set_docstring_parse_options" in str(w.message)]
    assert not ours, [str(w.message) for w in ours]


def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENRS_DEBUG", "1")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no rows at all"):
        main(["fit", "--config", "configs/tiny_cpu.yaml", "--data.source", str(empty)])


@pytest.mark.slow
def test_console_script_help_commands_and_list_override() -> None:
    """Through the installed script (in parallel): titled help (exit 0), a rejected subcommand (exit 2), a list."""
    key = rewards_key()
    runs = [
        start_console("--help"),
        start_console("validate"),
        start_console(
            "fit",
            "--config",
            "configs/tiny_cpu.yaml",
            f"--{key}",
            "[{name: cosine, weight: 2.0}, {name: format}]",
            "--print_config",
        ),  # fmt: skip
    ]
    (help_, rejected, printed) = [(p.communicate(timeout=300), p.returncode) for p in runs]
    (out, err), code = help_
    assert code == 0 and "usage: openrs-pl" in out and "  eval " in out
    assert "Lightning Trainer command line tool" not in out + err
    (out, err), code = rejected
    assert code == 2 and "unknown command 'validate'" in err
    (out, err), code = printed
    assert code == 0, err
    assert "gold_field" not in out and "name: cosine" in out
    assert "Deprecat" not in err


def start_console(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [str(CONSOLE_SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )


def exits_with_three(argv: list[str]) -> int:
    return 3 if argv == ["x"] else 0


def test_a_commands_exit_status_is_the_processs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(COMMANDS, "three", ("tests.test_cli_entry:exits_with_three", "returns 3"))
    assert main(["three", "x"]) == 3 and main(["three"]) == 0
