"""The completions JSONL: append-only, one graded completion per line, read back to resume an interrupted run.

Data-parallel workers each append to their own ``completions.shard<i>.jsonl`` (lines of 100k characters are not
atomic appends, so two writers must not share a file); :func:`merge_shards` folds them into the main file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

COMPLETIONS_FILE = "completions.jsonl"


def record_key(record: dict[str, Any]) -> tuple[str, str, int]:
    """What identifies a completion across runs: (benchmark, problem id, sample index)."""
    return record["benchmark"], str(record["id"]), int(record["sample"])


def shard_path(output_dir: Path, shard: int | None) -> Path:
    """The file a (shard) process appends to."""
    return output_dir / (COMPLETIONS_FILE if shard is None else f"completions.shard{shard}.jsonl")


def append_records(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records as JSON lines and flush, so a crash loses at most the batch being written."""
    torn = path.exists() and path.stat().st_size > 0 and _last_byte(path) != b"\n"
    with path.open("a", encoding="utf-8") as f:
        if torn:  # end the killed run's half line, so it stays the only unreadable one
            f.write("\n")
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1)


def read_records(output_dir: Path) -> dict[tuple[str, str, int], dict[str, Any]]:
    """All completions written so far (main file and any unmerged shard files), keyed by :func:`record_key`.

    A half-written last line (the process was killed mid-write) is ignored; its completion is generated again.
    """
    records: dict[tuple[str, str, int], dict[str, Any]] = {}
    for path in [output_dir / COMPLETIONS_FILE, *sorted(output_dir.glob("completions.shard*.jsonl"))]:
        for key, record in read_records_from(path).items():
            records.setdefault(key, record)
    return records


def merge_shards(output_dir: Path) -> None:
    """Move the shard files' records into the main file (skipping ones it already has) and delete the shards."""
    main = output_dir / COMPLETIONS_FILE
    known = set(read_records_from(main))
    for path in sorted(output_dir.glob("completions.shard*.jsonl")):
        fresh = [r for key, r in read_records_from(path).items() if key not in known]
        append_records(main, fresh)
        known.update(record_key(r) for r in fresh)
        path.unlink()


def read_records_from(path: Path) -> dict[tuple[str, str, int], dict[str, Any]]:
    """The records of one file (empty if it does not exist), skipping a torn last line."""
    out: dict[tuple[str, str, int], dict[str, Any]] = {}
    if path.exists():
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                out.setdefault(record_key(record), record)
    return out
