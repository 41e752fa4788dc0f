"""The completions JSONL: append-only, one graded :class:`EvalRecord` per line, read back to resume a run.

Data-parallel workers each append to their own ``completions.shard<i>.jsonl`` (lines of 100k characters are not
atomic appends, so two writers must not share a file); :func:`merge_shards` folds them into the main file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

COMPLETIONS_FILE = "completions.jsonl"

TruncatedPolicy = Literal["grade", "wrong"]
"""How a completion cut at the token limit is scored: ``"grade"`` grades its text like any other (lighteval's
behaviour, the paper's numbers), ``"wrong"`` scores it 0 whatever answer appears in it."""

RecordKey = tuple[str, str, int]


@dataclass
class EvalRecord:
    """One completion of one benchmark problem, and (once graded) the grader's verdict.

    Attributes:
        benchmark: benchmark name (``openrs_pl.data.benchmarks.BENCHMARKS``).
        id: the problem's id in that benchmark.
        sample: the sample index (0 .. samples-1).
        problem: the problem text.
        gold: the gold answer it is graded against.
        completion: the generated text.
        num_tokens: completion length in tokens.
        truncated: generation hit the token limit without an end-of-sequence token.
        pred: the extracted final answer ("" if none, or not graded yet).
        correct: the extracted answer equals the gold (math-verify's verdict, before the truncation policy).
        gold_ok: the gold parsed.
        timed_out: grading hit its time limit.
        error: the grading exception's text (e.g. a crashed grading worker), else None.
    """

    benchmark: str
    id: str
    sample: int
    problem: str
    gold: str
    completion: str
    num_tokens: int
    truncated: bool
    pred: str = ""
    correct: bool = False
    gold_ok: bool = True
    timed_out: bool = False
    error: str | None = None

    @property
    def key(self) -> RecordKey:
        """What identifies a completion across runs: (benchmark, problem id, sample index)."""
        return self.benchmark, self.id, self.sample

    def scored(self, truncated: TruncatedPolicy) -> bool:
        """Whether this completion counts as solved under the truncation policy.

        >>> r = EvalRecord("aime24", "60", 0, "p", "204", "... 204 ...", 9, truncated=True, correct=True)
        >>> r.scored("grade"), r.scored("wrong")
        (True, False)
        """
        return self.correct and not (truncated == "wrong" and self.truncated)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalRecord:
        """The record of one JSON line (unknown keys are ignored, ``id`` is read as text)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known} | {"id": str(data["id"])})


def shard_path(output_dir: Path, shard: int | None) -> Path:
    """The file a (shard) process appends to."""
    return output_dir / (COMPLETIONS_FILE if shard is None else f"completions.shard{shard}.jsonl")


def completion_files(output_dir: Path) -> list[Path]:
    """Every completions file present in ``output_dir`` (main file first, then shard files)."""
    main = output_dir / COMPLETIONS_FILE
    return [*([main] if main.exists() else []), *sorted(output_dir.glob("completions.shard*.jsonl"))]


def append_records(path: Path, records: Iterable[EvalRecord]) -> None:
    """Append records as JSON lines and flush, so a crash loses at most the batch being written."""
    torn = path.exists() and path.stat().st_size > 0 and _last_byte(path) != b"\n"
    with path.open("a", encoding="utf-8") as f:
        if torn:  # end the killed run's half line, so it stays the only unreadable one
            f.write("\n")
        for record in records:
            f.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1)


def read_records(output_dir: Path) -> dict[RecordKey, EvalRecord]:
    """All completions written so far (main file and any unmerged shard files), keyed by :attr:`EvalRecord.key`.

    A half-written last line (the process was killed mid-write) is ignored; its completion is generated again.
    """
    records: dict[RecordKey, EvalRecord] = {}
    for path in completion_files(output_dir):
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
        known.update(r.key for r in fresh)
        path.unlink()


def read_records_from(path: Path) -> dict[RecordKey, EvalRecord]:
    """The records of one file (empty if it does not exist), skipping a torn last line."""
    out: dict[RecordKey, EvalRecord] = {}
    if path.exists():
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    record = EvalRecord.from_json(json.loads(line))
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
                out.setdefault(record.key, record)
    return out
