"""``scripts/bench_logprobs.py --tiny``: the three log-prob layouts run, agree, and the JSON's figures add up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_run_compares_the_three_layouts(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/bench_logprobs.py"), "--tiny", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    prompts, completions = report["prompt_lengths"], report["completion_lengths"]
    assert len(prompts) == 2 and len(completions) == 2 * 3 and len(set(completions)) > 1  # a spread of lengths
    modes = report["modes"]
    # The padded batch computes every row at the longest prompt + completion; packing only the real tokens;
    # sharing each prompt once per group of G = 3.
    assert modes["padded"]["tokens"] == 6 * (max(prompts) + max(completions))
    assert modes["packed"]["tokens"] == report["real_tokens"] == 3 * sum(prompts) + sum(completions)
    assert modes["shared"]["tokens"] == sum(prompts) + sum(completions)
    for mode in ("packed", "shared"):
        assert modes[mode]["max_abs_logprob_diff"] < 1e-4
        for key in ("train", "train_cpu", "no_grad", "no_grad_cpu"):
            speedup = modes["padded"][f"{key}_s"] / modes[mode][f"{key}_s"]
            assert modes[mode][f"{key}_speedup"] == pytest.approx(speedup)
    for result in modes.values():
        assert min(result[f"{key}_s"] for key in ("train", "train_cpu", "no_grad", "no_grad_cpu")) > 0
        assert result["peak_memory_bytes"] >= 0
