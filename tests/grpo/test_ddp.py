"""2-process DDP on CPU (gloo): runs, keeps weights identical across ranks, and gives each rank its own prompts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_two_rank_ddp_fit(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(json.dumps({"problem": f"What is {a} + 1?", "answer": str(a + 1)}) + "\n" for a in range(16))
    )
    env = os.environ | {"PYTHONPATH": str(ROOT), "OPENRS_GRADING_WORKERS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests/grpo/ddp_fit.py"), str(tiny_model_dir), str(data), str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["step"] for r in ranks] == [2, 2]
    # The policy moved, and gradients were all-reduced: both ranks end with bit-identical weights although
    # each computed its loss on different prompts.
    assert ranks[0]["weights_sha256"] != ranks[0]["initial_sha256"]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    # Each rank trained on its own prompts: 2 steps x 2 prompts each, no overlap.
    seen = [set(r["problems"]) for r in ranks]
    assert all(len(r["problems"]) == 4 for r in ranks)
    assert not seen[0] & seen[1]
