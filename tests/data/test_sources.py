"""load_problems: bundled/local/hub sources, row checks with file+row+field errors, skip counts, dedupe."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openrs_pl.data.bundled import read_bundled
from openrs_pl.data.sources import ColumnMap, load_problems, load_problems_with_stats

ROWS = [
    {"problem": "What is 1+1?", "answer": "2", "solution": "$\\boxed{2}$", "level": "Easy", "tag": "a"},
    {"problem": "What is 2+3?", "answer": "5", "solution": "$\\boxed{5}$", "level": "Hard", "tag": "b"},
    {"problem": "What is 1+1?", "answer": "2", "solution": "again", "level": "Easy", "tag": "c"},
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def assert_one_line(exc: BaseException) -> None:
    """The error is a single line and hides the library traceback it came from."""
    assert "\n" not in str(exc)
    assert exc.__cause__ is None and exc.__suppress_context__ or exc.__context__ is None


def test_bundled_open_rs_null_answer_is_an_error_naming_file_row_field() -> None:
    with pytest.raises(ValueError, match=r"open_rs\.jsonl\.gz: row 4303: field 'answer' is null") as info:
        load_problems("bundled:open_rs")
    assert str(info.value).endswith("skip bad rows with --data.on_bad_row skip")  # the real flag
    assert_one_line(info.value)


def test_bundled_open_rs_skip_counts_bad_row_and_duplicates(caplog: pytest.LogCaptureFixture) -> None:
    raw = list(read_bundled("open_rs"))
    valid = [r for r in raw if isinstance(r["answer"], str) and r["answer"].strip()]
    expected_duplicates = len(valid) - len({r["problem"] for r in valid})
    with caplog.at_level(logging.INFO, logger="openrs_pl.data"):
        rows, stats = load_problems_with_stats("bundled:open_rs", on_bad_row="skip")
    assert (stats.loaded, stats.skipped_bad_rows, stats.duplicates) == (len(raw), 1, expected_duplicates)
    assert (len(raw), expected_duplicates) == (7000, 162)  # the README's numbers for the real data
    assert [r["id"] for r in rows] == [r["id"] for r in valid]
    assert 4303 not in {r["id"] for r in rows}
    assert "skipped 1 bad row(s)" in caplog.text and "row 4303: field 'answer' is null" in caplog.text
    assert "162 row(s) repeat an earlier problem; kept" in caplog.text


def test_dedupe_keeps_first_occurrence_of_each_problem() -> None:
    rows = load_problems("bundled:open_rs", on_bad_row="skip", dedupe=True)
    problems = [r["problem"] for r in rows]
    assert len(problems) == len(set(problems)) == 7000 - 1 - 162
    first_id: dict[str, int] = {}
    for r in read_bundled("open_rs"):
        first_id.setdefault(r["problem"], r["id"])
    assert all(r["id"] == first_id[r["problem"]] for r in rows)


@pytest.mark.parametrize(
    ("bad_row", "reason"),
    [
        ({"problem": "Q?", "answer": None}, "field 'answer' is null"),
        ({"problem": "   ", "answer": "3"}, "field 'problem' is empty"),
        ({"problem": "Q?", "answer": 3}, "field 'answer' is int, not a string"),
        ({"problem": "Q?"}, "field 'answer' is missing"),
        ({"answer": "3"}, "field 'problem' is missing"),
    ],
)
def test_bad_row_error_names_file_row_field_and_skip_counts_it(
    tmp_path: Path, bad_row: dict[str, Any], reason: str
) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], ROWS[1], bad_row, ROWS[1]])
    with pytest.raises(ValueError) as info:
        load_problems(str(path))
    assert str(info.value).startswith(f"{path}: row 2: {reason}")
    assert_one_line(info.value)
    rows, stats = load_problems_with_stats(str(path), on_bad_row="skip")
    assert [r["tag"] for r in rows] == ["a", "b", "b"]
    assert (stats.loaded, stats.skipped_bad_rows) == (4, 1)


def test_column_missing_from_whole_file_is_an_error_even_with_skip(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "Q?", "answer": "1"}])
    for mode in ("error", "skip"):
        with pytest.raises(
            ValueError, match=r"q\.jsonl: no column 'problem' for the problem \(columns: answer, question\)"
        ):
            load_problems(str(path), on_bad_row=mode)  # type: ignore[arg-type]


def test_column_map_renames_to_canonical_keys_and_keeps_other_columns(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "Q?", "gold": "7", "difficulty": 3, "extra": [1]}])
    rows = load_problems(
        str(path), columns=ColumnMap(problem="question", answer="gold", solution=None, level="difficulty")
    )
    assert rows == [
        {"question": "Q?", "gold": "7", "difficulty": 3, "extra": [1], "problem": "Q?", "answer": "7", "level": 3}
    ]


def test_missing_optional_solution_and_level_become_none(tmp_path: Path) -> None:
    rows = load_problems(str(write_jsonl(tmp_path / "a.jsonl", [{"problem": "Q?", "answer": "1"}])))
    assert rows == [{"problem": "Q?", "answer": "1", "solution": None, "level": None}]


def test_jsonl_json_parquet_and_folder_sources_give_the_same_rows(tmp_path: Path) -> None:
    jsonl = write_jsonl(tmp_path / "a.jsonl", ROWS)
    as_list = tmp_path / "b.json"
    as_list.write_text(json.dumps(ROWS), encoding="utf-8")
    as_lines = write_jsonl(tmp_path / "c.json", ROWS)
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), parquet)
    loaded = [load_problems(str(p)) for p in (jsonl, as_list, as_lines, parquet)]
    assert all(rows == loaded[0] for rows in loaded)
    assert [r["tag"] for r in loaded[0]] == ["a", "b", "c"] and loaded[0][1]["answer"] == "5"
    folder_rows, stats = load_problems_with_stats(str(tmp_path))
    assert folder_rows == loaded[0] * 4  # files in sorted name order
    assert (stats.loaded, stats.duplicates) == (12, 12 - 2)


def test_error_in_a_folder_names_the_offending_file(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    bad = write_jsonl(tmp_path / "b.jsonl", [ROWS[0], {"problem": "", "answer": "1"}])
    with pytest.raises(ValueError, match=rf"^{bad}: row 1: field 'problem' is empty"):
        load_problems(str(tmp_path))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "broken.jsonl",
            b'{"problem": "Q", "answer": "1"}\n{"problem": \n',
            r"cannot read .*broken\.jsonl: line 2 is not valid JSON",
        ),
        ("broken.json", b"[{", r"cannot read .*broken\.json: not valid JSON"),
        (
            "latin1.jsonl",
            '{"problem": "caf\xe9"}\n'.encode("latin-1"),
            r"latin1\.jsonl: line 1 is not UTF-8 text \(byte 0xe9\); re-save the file as UTF-8",
        ),
        ("garbage.parquet", b"not a parquet file at all", r"cannot read .*garbage\.parquet: "),
        ("rows.jsonl", b'["problem", "answer"]\n', r"rows\.jsonl: row 0 is a JSON list, not an object"),
        ("data.csv", b"problem,answer\n", r"unsupported file type '\.csv'"),
    ],
)
def test_unreadable_files_give_one_line_errors(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        load_problems(str(path))
    assert_one_line(info.value)


def test_missing_paths_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl: no such local data file or folder"):
        load_problems(str(tmp_path / "nope.jsonl"))
    with pytest.raises(FileNotFoundError, match="not/here: no such local data file or folder .*; check the path$"):
        load_problems("./not/here")
    with pytest.raises(ValueError, match="folder has no .jsonl/.json/.parquet files"):
        load_problems(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no bundled data set 'nope'; bundled: aime24, amc23"):
        load_problems("bundled:nope")


def test_unknown_hub_dataset_offline_fails_fast_in_one_line() -> None:
    start = time.monotonic()
    # A relative path that could also be a hub id: both readings are tried and named, no network retries.
    with pytest.raises(
        FileNotFoundError,
        match=r"no such local data file or folder .*, and hub dataset id 'nobody-xyz/no-such-dataset' is not in "
        r"the local cache while the hub is unreachable \(HF_HUB_OFFLINE is set\)",
    ) as info:
        load_problems("nobody-xyz/no-such-dataset")
    assert time.monotonic() - start < 10
    assert_one_line(info.value)


def test_no_usable_rows_and_bad_option(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [{"problem": "Q", "answer": None}])
    with pytest.raises(ValueError, match=r"no usable rows \(1 read, 1 bad\)"):
        load_problems(str(path), on_bad_row="skip")
    with pytest.raises(ValueError, match="on_bad_row must be 'error' or 'skip'"):
        load_problems(str(path), on_bad_row="ignore")  # type: ignore[arg-type]


def test_duplicate_count_matches_an_independent_count(tmp_path: Path) -> None:
    rows = [{"problem": p, "answer": "1"} for p in "abacabxa"]
    _, stats = load_problems_with_stats(str(write_jsonl(tmp_path / "d.jsonl", rows)))
    assert stats.duplicates == sum(n - 1 for n in Counter("abacabxa").values())
