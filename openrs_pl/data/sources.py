"""Loading math problems from a bundled file, a local file or folder, or a Hugging Face dataset, with row checks.

Every row must have a non-empty string problem and answer. A bad row raises a one-line ``ValueError`` naming the
file, the row index and the field, or, with ``on_bad_row="skip"``, is skipped and counted. Problems that repeat an
earlier row's are counted and kept unless ``dedupe=True`` (the recipe trained on the data as it is).

Local ``.jsonl``/``.json`` files are parsed with the standard library and ``.parquet`` with pyarrow instead of
``datasets.load_dataset("json", ...)``: the ``datasets`` JSON builder re-types a column whose values mix types
(in datasets 5.2 the string answer ``"1"`` came back as the integer ``1``), which would hide exactly the defects
these checks exist to report, and it would name no row. Hub ids go through ``datasets.load_dataset``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lightning.fabric.utilities.rank_zero import rank_zero_only

from openrs_pl.data.bundled import bundled_path, read_bundled
from openrs_pl.hub import resolve_dataset

log = logging.getLogger("openrs_pl.data")

BUNDLED_PREFIX = "bundled:"
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
# How many offending rows a "skipped N bad rows" message spells out.
_EXAMPLES_SHOWN = 5

OnBadRow = Literal["error", "skip"]
Rows = list[dict[str, Any]]


@dataclass
class ColumnMap:
    """Which source columns hold the canonical fields. ``solution``/``level`` are optional (``None``: not mapped)."""

    problem: str = "problem"
    answer: str = "answer"
    solution: str | None = "solution"
    level: str | None = "level"


@dataclass
class LoadStats:
    """What happened while loading: rows read, bad rows skipped, rows repeating an earlier problem."""

    loaded: int = 0
    skipped_bad_rows: int = 0
    duplicates: int = 0


@rank_zero_only
def log_rank_zero(message: str, level: int = logging.INFO) -> None:
    """Log ``message`` on the ``openrs_pl.data`` logger from global rank 0 only, so DDP runs report once."""
    log.log(level, message)


def load_problems(
    source: str,
    split: str = "train",
    columns: ColumnMap = ColumnMap(),
    on_bad_row: OnBadRow = "error",
    dedupe: bool = False,
) -> Rows:
    """Problems from ``source`` as dicts with canonical keys; see ``load_problems_with_stats``."""
    return load_problems_with_stats(source, split, columns, on_bad_row, dedupe)[0]


def load_problems_with_stats(
    source: str,
    split: str = "train",
    columns: ColumnMap = ColumnMap(),
    on_bad_row: OnBadRow = "error",
    dedupe: bool = False,
) -> tuple[Rows, LoadStats]:
    """Load, check and canonicalise problems.

    Args:
        source: ``"bundled:<name>"`` (a file in ``openrs_pl/data/bundled``), a local ``.jsonl``/``.json``/
            ``.parquet`` file or a folder of them, or a Hugging Face dataset id.
        split: The split of a hub dataset (ignored for files).
        columns: Source column names of the canonical fields.
        on_bad_row: ``"error"`` raises on the first bad row; ``"skip"`` drops bad rows and logs their count.
        dedupe: Drop rows whose problem text repeats an earlier row's (the first one is kept).

    Returns:
        The rows, each with ``"problem"`` and ``"answer"`` (and ``"solution"``/``"level"`` when mapped, ``None``
        where the source lacks them) plus all source columns unchanged, and the load statistics.

    Raises:
        SourceNotFoundError: ``source`` is neither an existing local path nor a usable hub id (a
            ``FileNotFoundError``; see :mod:`openrs_pl.hub`).
        ValueError: An unreadable file, an unknown hub dataset, a column missing from a whole file, a bad row
            (with ``on_bad_row="error"``), or no usable row at all. Always one line.
    """
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    stats = LoadStats()
    rows: Rows = []
    for label, table in read_source(source, split):
        stats.loaded += len(table)
        good, bad = check_rows(label, table, columns, on_bad_row)
        rows.extend(good)
        stats.skipped_bad_rows += len(bad)
        if bad:
            shown = "; ".join(bad[:_EXAMPLES_SHOWN]) + ("; ..." if len(bad) > _EXAMPLES_SHOWN else "")
            log_rank_zero(f"skipped {len(bad)} bad row(s) in {label}: {shown}", logging.WARNING)
    if not stats.loaded:
        raise ValueError(f"{source}: no rows at all (an empty file?); give a file with one problem per row")
    if not rows:
        raise ValueError(
            f"{source}: no usable rows ({stats.loaded} read, {stats.skipped_bad_rows} bad); "
            "check the file's contents and the column names (--data.columns.problem, --data.columns.answer)"
        )
    unique = first_occurrences(rows)
    stats.duplicates = len(rows) - len(unique)
    if stats.duplicates:
        action = "dropped (dedupe=True)" if dedupe else "kept (dedupe=False, as the recipe trained)"
        log_rank_zero(f"{source}: {stats.duplicates} row(s) repeat an earlier problem; {action}")
    return (unique if dedupe else rows), stats


def first_occurrences(rows: Rows) -> Rows:
    """The rows whose problem text has not appeared in an earlier row, in order.

    >>> rows = [{"id": 0, "problem": "a"}, {"id": 1, "problem": "a"}, {"id": 2, "problem": "b"}]
    >>> [r["id"] for r in first_occurrences(rows)]
    [0, 2]
    """
    seen: set[str] = set()
    unique = []
    for row in rows:
        if row["problem"] not in seen:
            seen.add(row["problem"])
            unique.append(row)
    return unique


def check_rows(label: str, table: Rows, columns: ColumnMap, on_bad_row: OnBadRow) -> tuple[Rows, list[str]]:
    """Canonicalise the good rows of one table and describe the bad ones (``"row 3: field 'answer' is null"``).

    Raises:
        ValueError: A required column is absent from every row (a wrong ``ColumnMap``, never skipped), or a row is
            bad and ``on_bad_row`` is ``"error"``.
    """
    present = set().union(*(row.keys() for row in table)) if table else set()
    for field_name, column in (("problem", columns.problem), ("answer", columns.answer)):
        if table and column not in present:
            raise ValueError(
                f"{label}: no column {column!r} for the {field_name} (columns: {', '.join(sorted(present))}); "
                f"name the column with --data.columns.{field_name} <name>"
            )
    good: Rows = []
    bad: list[str] = []
    for index, row in enumerate(table):
        problem = text_field_error(row, columns.problem)
        reason = problem or text_field_error(row, columns.answer)
        if reason is None:
            good.append(canonical_row(row, columns))
        elif on_bad_row == "error":
            raise ValueError(
                f"{label}: row {index}: {reason}; fix the row, or skip bad rows with --data.on_bad_row skip"
            )
        else:
            bad.append(f"row {index}: {reason}")
    return good, bad


def text_field_error(row: dict[str, Any], column: str) -> str | None:
    """Why ``row[column]`` is not a usable non-empty string, or ``None`` when it is.

    >>> text_field_error({"answer": None}, "answer")
    "field 'answer' is null"
    >>> text_field_error({"answer": 4}, "answer")
    "field 'answer' is int, not a string"
    >>> text_field_error({"answer": " 4 "}, "answer") is None
    True
    """
    if column not in row:
        return f"field {column!r} is missing"
    value = row[column]
    if value is None:
        return f"field {column!r} is null"
    if not isinstance(value, str):
        return f"field {column!r} is {type(value).__name__}, not a string"
    if not value.strip():
        return f"field {column!r} is empty"
    return None


def canonical_row(row: dict[str, Any], columns: ColumnMap) -> dict[str, Any]:
    """``row`` with the canonical keys added (source columns are kept unchanged).

    >>> canonical_row({"q": "1+1?", "a": "2"}, ColumnMap(problem="q", answer="a", level=None))
    {'q': '1+1?', 'a': '2', 'problem': '1+1?', 'answer': '2', 'solution': None}
    """
    out = {**row, "problem": row[columns.problem], "answer": row[columns.answer]}
    for key, column in (("solution", columns.solution), ("level", columns.level)):
        if column is not None:
            out[key] = row.get(column)
    return out


def read_source(source: str, split: str) -> list[tuple[str, Rows]]:
    """The raw tables of ``source`` as ``(label, rows)`` pairs; the label names the file in error messages."""
    if source.startswith(BUNDLED_PREFIX):
        name = source.removeprefix(BUNDLED_PREFIX)
        return [(str(bundled_path(name)), list(read_bundled(name)))]
    resolved = resolve_dataset(source)  # local path or hub id, decided once (fails fast when offline)
    if resolved.where != "local":  # the hub, or its cached snapshot folder when the hub is unreachable
        return [(f"{resolved} [{split}]", read_hub(resolved.location, split))]
    path = Path(resolved.location)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in LOCAL_SUFFIXES)
        if not files:
            raise ValueError(f"{path}: folder has no {'/'.join(LOCAL_SUFFIXES)} files")
        return [(str(p), read_local_file(p)) for p in files]
    return [(str(path), read_local_file(path))]


def read_local_file(path: Path) -> Rows:
    """Rows of one local ``.jsonl``, ``.json`` (a list of objects, or JSON lines) or ``.parquet`` file."""
    if path.suffix not in LOCAL_SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(LOCAL_SUFFIXES)}")
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        text = path.read_text(encoding="utf-8")
        records = parse_json_records(text) if path.suffix == ".json" else parse_json_lines(text)
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ValueError(
            f"{path}: line {line} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); re-save the file as UTF-8"
        ) from None
    except (OSError, ValueError) as exc:
        # pyarrow's ArrowInvalid and json's JSONDecodeError are ValueErrors.
        raise ValueError(f"cannot read {path}: {first_line(exc)}") from None
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: row {index} is a JSON {type(record).__name__}, not an object")
    return records


def parse_json_lines(text: str) -> list[Any]:
    """One JSON value per non-blank line.

    >>> parse_json_lines('{"a": 1}\\n\\n{"a": 2}\\n')
    [{'a': 1}, {'a': 2}]
    """
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"line {number} is not valid JSON ({exc.msg} at column {exc.colno})") from None
    return records


def parse_json_records(text: str) -> list[Any]:
    """A ``.json`` file's records: a top-level list, or JSON lines (``.json`` is often used for those).

    >>> parse_json_records('[{"a": 1}]'), parse_json_records('{"a": 1}\\n{"a": 2}')
    ([{'a': 1}], [{'a': 1}, {'a': 2}])
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            return parse_json_lines(text)
        raise ValueError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        # A single object: a one-line JSON-lines file.
        return [data]
    raise ValueError(f"expected a JSON list of objects or JSON lines, got a top-level {type(data).__name__}")


def read_hub(dataset_id: str, split: str) -> Rows:
    """Rows of a Hugging Face dataset split (from the local cache when offline)."""
    import datasets

    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(dataset_id, split=split).to_list()
    except Exception as exc:  # datasets raises many unrelated types; all of them mean "cannot load it"
        raise ValueError(
            f"cannot load hub dataset {dataset_id!r} (split {split!r}) with the Hugging Face datasets loader: "
            f"{type(exc).__name__}: {first_line(exc)}"
        ) from None


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message (library errors can span many lines)."""
    lines: Iterable[str] = (line.strip() for line in str(exc).splitlines())
    return next((line for line in lines if line), type(exc).__name__)
