"""Short messages for configuration mistakes: an unknown key with its nearest valid one, a bad value, bad YAML.

jsonargparse reports a typo inside a nested config group as an 80-line dump of every union member it tried (and a
typo in a YAML's ``data:`` or ``trainer:`` group only as "unrecognized arguments: fit"). When parsing fails, the
keys the user wrote -- on the command line and in every ``--config`` file -- are checked against the keys the
parser accepts, and the first unknown one is reported with its nearest valid spelling (:mod:`difflib`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

# Options of the parser itself, never config keys.
_PARSER_OPTIONS = {"help", "config", "print_config"}
# Boilerplate lines of jsonargparse's union errors that say nothing about the mistake.
_NOISE = (
    "Does not validate against",
    "Subtypes:",
    "Errors:",
    "Given value",
    "- Expected a <class 'NoneType'>",
    "- Expected a path but",
    "- Problem with given class_path",
    "Problem with given class_path",
)


def accepted_keys(parser: argparse.ArgumentParser) -> tuple[set[str], set[str]]:
    """The dotted keys ``parser`` accepts, and the "open" keys below which any key is accepted.

    Dataclass-typed options (also ``X | None``) are expanded field by field; options whose values are dicts,
    lists or class specs (``class_path``/``init_args``, e.g. ``trainer.logger``) are open.
    """
    keys: set[str] = set()
    open_keys: set[str] = set()
    for action in parser._actions:  # argparse keeps no public list of its options
        dest = action.dest
        if dest in _PARSER_OPTIONS or dest == argparse.SUPPRESS or not action.option_strings:
            continue
        keys.add(dest)
        _expand(dest, getattr(action, "_typehint", None), keys, open_keys)
    return keys, open_keys


def _expand(key: str, hint: Any, keys: set[str], open_keys: set[str]) -> None:
    """Add the fields of a dataclass-typed ``key`` to ``keys``, or mark ``key`` open when it holds free-form data."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            _expand(key, members[0], keys, open_keys)
        elif members:
            open_keys.add(key)
        return
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        hints = typing.get_type_hints(hint)
        for f in dataclasses.fields(hint):
            keys.add(f"{key}.{f.name}")
            _expand(f"{key}.{f.name}", hints[f.name], keys, open_keys)
    elif hint is not None and not _is_scalar(hint):
        open_keys.add(key)


def _is_scalar(hint: Any) -> bool:
    return hint in (int, float, str, bool, Path) or typing.get_origin(hint) is typing.Literal


def user_keys(argv: list[str]) -> Iterator[tuple[str, str]]:
    """``(dotted key, where)`` for every option on the command line and every key in its ``--config`` files."""
    for index, token in enumerate(argv):
        if not token.startswith("--"):
            if index > 0 and argv[index - 1] in ("-c", "--config"):
                yield from _yaml_keys(token)
            continue
        key = token[2:].split("=", 1)[0].removesuffix("+")
        if key == "config" and "=" in token:
            yield from _yaml_keys(token.split("=", 1)[1])
        elif key not in _PARSER_OPTIONS:
            yield key, "on the command line"


def _yaml_keys(path: str) -> Iterator[tuple[str, str]]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return  # reported by yaml_problem
    if isinstance(data, dict):
        for key in _flatten(data):
            yield key, f"in {path}"


def _flatten(data: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for name, value in data.items():
        key = f"{prefix}{name}"
        yield key
        if isinstance(value, dict) and "class_path" not in value and "init_args" not in value:
            yield from _flatten(value, key + ".")


def unknown_key_message(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """``unknown key 'a.b' on the command line; did you mean 'a.c'?`` for the first key the parser rejects."""
    keys, open_keys = accepted_keys(parser)
    for key, where in user_keys(argv):
        parts = key.split(".")
        if key in keys or any(".".join(parts[:n]) in open_keys for n in range(1, len(parts))):
            continue
        siblings = sorted(k for k in keys if k.count(".") == key.count("."))
        close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else "not a key of this command"
        return f"unknown key '{key}' {where}; {hint}"
    return None


def yaml_problem(argv: list[str]) -> str | None:
    """One line for the first ``--config`` file that is missing or not a YAML mapping."""
    for index, token in enumerate(argv):
        if index == 0 or argv[index - 1] not in ("-c", "--config"):
            continue
        path = Path(token)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return f"config file {token} does not exist"
        except UnicodeDecodeError as exc:
            return f"config file {token} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            return f"config file {token} is not valid YAML: {problem}{where}"
        if data is not None and not isinstance(data, dict):
            return f"config file {token} must hold a mapping of keys (model:, data:, ...), not a {type(data).__name__}"
    return None


def condense(message: str) -> str:
    """jsonargparse's nested error message as one line: the full key and the innermost reason.

    >>> condense('Parser key "model.grpo":\\n  Errors:\\n    - Problem with given class_path \\'x\\':\\n'
    ...          '        Parser key "beta":\\n          Expected a <class \\'float\\'>. Got value: abc')
    "model.grpo.beta: Expected a <class 'float'>. Got value: abc"
    >>> condense('Parser key "model.model":\\n  Expected a str. Got value: None')
    'model.model is required; give --model.model or set it in the --config file'
    """
    key: list[str] = []
    details: list[str] = []
    for line in message.splitlines():
        text = line.strip()
        match = re.match(r'Parser key "([^"]+)":?\s*(.*)', text)
        if match:
            key.append(match[1])
            text = match[2]
        if text and not text.startswith(_NOISE):
            details.append(text.removeprefix("- "))
    reason = "; ".join(dict.fromkeys(details[:2])) or message.strip()
    if key and reason.endswith("Got value: None"):
        return f"{'.'.join(key)} is required; give --{'.'.join(key)} or set it in the --config file"
    return f"{'.'.join(key)}: {reason}" if key else reason


def config_error_message(parser: argparse.ArgumentParser, argv: list[str], message: str) -> str:
    """The one-line replacement of jsonargparse's ``message`` for a failed parse of ``argv``."""
    return unknown_key_message(parser, argv) or condense(message)
