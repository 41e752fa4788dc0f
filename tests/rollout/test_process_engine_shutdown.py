"""No orphan generator process and no hang, however the trainer ends: close, error, Ctrl-C, SIGTERM, SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from processes import alive, gone_within

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "tests/rollout/process_engine_owner.py"


def start_owner(model_dir: Path, how: str) -> tuple[subprocess.Popen[str], int]:
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    owner = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(model_dir), how],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    assert owner.stdout is not None
    for line in owner.stdout:
        if line.startswith("WORKER "):
            return owner, int(line.split()[1])
    owner.wait(timeout=10)
    raise AssertionError(f"the owner exited with {owner.returncode} before its worker generated")


@pytest.mark.parametrize(
    ("how", "signum", "exit_code"),
    [
        pytest.param("close", None, 0, marks=pytest.mark.slow),
        pytest.param("raise", None, 1, marks=pytest.mark.slow),
        pytest.param("busy-raise", None, 1, marks=pytest.mark.slow),
        # An uncaught KeyboardInterrupt ends Python by re-raising SIGINT, hence the exit status.
        pytest.param("wait", signal.SIGINT, -signal.SIGINT, marks=pytest.mark.slow),
        # A terminal's Ctrl-C reaches the whole process group: the worker ignores it, so the trainer can still
        # finish its step, then exits normally and takes the worker with it.
        pytest.param("interrupt-then-generate", -signal.SIGINT, 0, marks=pytest.mark.slow),
        pytest.param("wait", signal.SIGTERM, -signal.SIGTERM, marks=pytest.mark.slow),
        ("wait", signal.SIGKILL, -signal.SIGKILL),  # runs none of the trainer's clean-up
    ],
    ids=["close", "error", "error-while-generating", "sigint", "ctrl-c-to-group", "sigterm", "sigkill"],
)
def test_the_worker_is_gone_within_seconds_of_the_trainer(
    tiny_model_dir: Path, how: str, signum: int | None, exit_code: int
) -> None:
    owner, worker = start_owner(tiny_model_dir, how)
    try:
        assert alive(worker)
        if signum is not None:
            if signum < 0:
                os.killpg(owner.pid, -signum)
            else:
                owner.send_signal(signum)
        rest, _ = owner.communicate(timeout=30)  # no hang: the trainer exits
        assert owner.returncode == exit_code, rest
        assert gone_within(worker, 5.0), f"worker {worker} outlived its trainer ({how}, {signum})"
        if how == "close":
            assert "CLOSED" in rest
        if how == "interrupt-then-generate":
            assert "GENERATED AFTER CTRL-C" in rest
    finally:
        for pid in (owner.pid, worker):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
