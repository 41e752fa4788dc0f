"""``scripts/bench_process_engine.py`` on the tiny model: both sides decode, pushes are timed, sizes add up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_run_reports_throughput_and_push_costs(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    args = ["--repeats", "1", "--push-repeats", "2", "--num-prompts", "2", "--n", "2", "--max-tokens", "16"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/bench_process_engine.py"), *args, "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert (result["backend"], result["engine_device"]) == ("gloo", "cpu")
    assert result["pushed_bytes"] == 4 * result["params"], "float32, the tied LM head sent once"
    assert result["in_process_tokens_per_s"] > 0 and result["process_tokens_per_s"] > 0
    assert all(0 < result[k] < 60 for k in ("start_s", "push_trainer_s", "push_during_generation_s"))
