"""``scripts/project_gpu_step.py``: the projection's arithmetic, checked by recomputing it independently."""

from __future__ import annotations

import doctest
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts/project_gpu_step.py"


def _load():  # the script is not a package module; load it to run its doctests
    spec = importlib.util.spec_from_file_location("project_gpu_step", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_doctests_pass() -> None:
    failures, tried = doctest.testmod(_load())
    assert tried >= 4 and failures == 0


def test_cli_writes_a_projection_matching_an_independent_computation(tmp_path: Path) -> None:
    out = tmp_path / "proj.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--decode-efficiency", "0.4", "--out", str(out)],
        env=os.environ | {"PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "| limit | 3584 |" in proc.stdout and "500 steps: sync" in proc.stdout
    result = json.loads(out.read_text())
    limit = result["profiles"]["limit"]

    # R1-Distill-Qwen-1.5B: 1,777,088,000 parameters in bf16; 28 layers x 2 x 2 KV heads x 128 x 2 bytes of KV
    weights, kv = 2 * 1_777_088_000, 28 * 2 * 2 * 128 * 2
    seqs, prompt, n = 3 * 4 * 6, 512, 3584
    decode_bytes = n * weights + seqs * kv * sum(prompt + t for t in range(1, n + 1))
    assert limit["generation_s"] == pytest.approx(decode_bytes / (696e9 * 0.4), rel=1e-9)

    # 4 micro-batches per rank of (0.976 s train + 0.252 s reference) on an H100, 989 / 149.7 times slower on an A40
    assert limit["training_s"] == pytest.approx(4 * (0.976 + 0.252) * 989 / 149.7, rel=1e-9)
    assert limit["sync_s"] == pytest.approx(weights / 20e9 + 1.0)
    assert limit["sync_step_s"] == pytest.approx(limit["generation_s"] + limit["training_s"] + limit["sync_s"])
    assert limit["overlapped_step_s"] == pytest.approx(
        max(limit["generation_s"], limit["training_s"]) + 1.0 + weights / 20e9
    )
    assert limit["sync_run_h"] == pytest.approx(limit["sync_step_s"] * 500 / 3600)

    spread = result["profiles"]["spread"]
    # a spread batch decodes as many steps (its longest hits the limit) but reads less KV, and packing trains less
    assert spread["generation_s"] < limit["generation_s"]
    assert spread["packed_training_s"] < spread["training_s"] < limit["training_s"]
    assert spread["mean_completion_len"] == pytest.approx((448 + 3584) / 2, abs=1)
