"""Agreement of our grader with the source evaluator on a folder of real completions (JSONL, one per benchmark).

Usage: ``python scripts/grader_agreement.py --data-dir DIR [--out grader_agreement.json] [--every N]``.
Prints a per-benchmark table and writes the figures plus every disagreement (with the completion's tail) as
JSON; ``docs/grading.md`` discusses the results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from openrs_pl.eval.agreement import agreement_report, read_rows, render_table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="folder of completion JSONL files")
    parser.add_argument("--out", type=Path, default=Path("grader_agreement.json"), help="JSON report path")
    parser.add_argument("--every", type=int, default=1, help="grade only every N-th row (quick look)")
    parser.add_argument("--timeout-s", type=float, default=5.0, help="grading time limit per completion")
    args = parser.parse_args(argv)
    if not args.data_dir.is_dir():
        parser.error(f"no completions folder at {args.data_dir}")
    rows = list(read_rows(args.data_dir))[:: args.every]
    report = agreement_report(rows, timeout_s=args.timeout_s)
    args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(render_table(report))
    print(
        f"{report['rows']} rows graded in {report['seconds']:.0f} s; {len(report['disagreements'])} disagreements "
        f"written to {args.out}"
    )


if __name__ == "__main__":
    main()
