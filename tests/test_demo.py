"""``make demo`` in quiet-mode-short: its console has no third-party noise and its picture and examples appear."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

NOISE = ("Tip:", "LeafSpec", "Loading weights", "Writing model shards", "manual optimization", "GPU available",
         "DeepSpeed", "Setting accelerator", "LightningCLI's args", "Warning", "warn(",
         "Triton is installed")  # fmt: skip


@pytest.mark.slow
def test_short_demo_is_quiet_and_tells_the_story(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    env.pop("OPENRS_PL_VERBOSE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "openrs_pl.demo", "--out", str(tmp_path), "--sft-steps", "5", "--grpo-steps", "3",
         "--rollout.top_k", "7"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-3000:]
    noise = [n for n in NOISE if n in console]
    assert not noise, f"third-party output on the demo's console: {noise}\n{console}"
    assert console.count("right  ") + console.count("wrong  ") == 6  # 3 examples before and 3 after
    assert "openrs-pl fit" in console and "batch / step    1 ranks x 16 prompts x 6 completions = 96" in console
    assert "| accuracy " in console and "done: 3 steps in" in console
    assert "total reward" in (tmp_path / "grpo" / "version_0" / "report" / "index.html").read_text()
    # extra --key value pairs reach the fit, and the summary records the run
    assert "top_k: 7" in (tmp_path / "grpo" / "version_0" / "config.yaml").read_text()
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    assert summary["grpo_steps"] == 3 and summary["fit_overrides"] == ["--rollout.top_k", "7"]
    assert 0 <= summary["before"]["accuracy"] <= 1 and 0 <= summary["after"]["accuracy"] <= 1
    png = (tmp_path / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24])[0] > 800
