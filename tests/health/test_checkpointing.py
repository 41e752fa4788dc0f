"""Checkpoints you can trust, tested with real kills: ``kill -9`` mid-save, Ctrl-C, ``kill -9`` mid-run + resume.

The resume tests go through the installed ``openrs-pl`` console script and compare every per-step metric of the
interrupted-and-resumed run with an uninterrupted run of the same config.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from openrs_pl.health.checkpointing import HFExport, version_of

ROOT = Path(__file__).parents[2]
CLI = [str(Path(sys.executable).with_name("openrs-pl"))]
STEPS = 6
COMPARED = (
    "train/reward/mean", "train/rewards/format/mean", "train/rewards/cosine/mean", "train/completions/mean_length",
    "train/completions/clipped_ratio", "train/loss", "train/policy_loss", "train/kl", "train/grad_norm", "train/lr",
)  # fmt: skip

SAVER = textwrap.dedent(
    """
    import sys, torch
    from openrs_pl.health.checkpointing import AtomicCheckpointIO
    from lightning.pytorch.plugins.io import TorchCheckpointIO
    path, atomic = sys.argv[1], sys.argv[2] == "atomic"
    blob = torch.arange(25_000_000, dtype=torch.float32)  # 100 MB: a write takes long enough to be killed
    for version in range(1000):
        checkpoint = {"version": version, "blob": blob + version}
        if atomic:
            AtomicCheckpointIO().save_checkpoint(checkpoint, path)
        else:
            torch.save(checkpoint, path)
        print(f"saved {version}", flush=True)
    """
)


def kill_mid_save(tmp_path: Path, mode: str) -> tuple[Path, int]:
    """Run the saver, let it finish one checkpoint, SIGKILL it while it writes the next one."""
    path = tmp_path / "last.ckpt"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SAVER, str(path), mode], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "saved 0"
    complete = path.stat().st_size
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the next write is under way: a temporary file, or the target shrunk
        writing = [p for p in tmp_path.iterdir() if p.name.startswith(".last.ckpt.tmp")]
        if (writing and writing[0].stat().st_size > 0) or (mode == "plain" and 0 < path.stat().st_size < complete):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return path, complete


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_write_keeps_the_previous_one(tmp_path: Path) -> None:
    path, _ = kill_mid_save(tmp_path, "atomic")
    checkpoint = torch.load(path, weights_only=False)
    version = checkpoint["version"]
    assert torch.equal(checkpoint["blob"], torch.arange(25_000_000, dtype=torch.float32) + version)


@pytest.mark.slow
def test_negative_control_a_plain_torch_save_killed_mid_write_is_corrupt(tmp_path: Path) -> None:
    """Shows that the kill above really lands mid-write: the same kill breaks a direct ``torch.save``."""
    path, complete = kill_mid_save(tmp_path, "plain")
    assert path.stat().st_size < complete
    with pytest.raises(Exception):  # noqa: B017  (torch raises RuntimeError or EOFError, depending on where it stops)
        torch.load(path, weights_only=False)


# --------------------------------------------------------------------------------- the CLI: interrupts, resume


def test_hf_export_writes_through_export_hf_and_names_a_module_without_it(tmp_path: Path) -> None:
    class Exportable(torch.nn.Module):
        def export_hf(self, out_dir: str | Path) -> Path:
            Path(out_dir).mkdir(parents=True)
            (Path(out_dir) / "config.json").write_text("{}")
            return Path(out_dir)

    trainer = SimpleNamespace(global_step=2, is_global_zero=True)
    callback = HFExport(every_n_train_steps=2, dirpath=str(tmp_path))
    callback.on_train_batch_end(trainer, Exportable(), None, None, 0)
    assert (tmp_path / "step2" / "config.json").is_file()
    with pytest.raises(TypeError, match="HFExport needs a module with export_hf.*Linear"):
        callback.on_train_batch_end(trainer, torch.nn.Linear(1, 1), None, None, 0)


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """Data and a config that checkpoints and exports every step."""
    root = tmp_path_factory.mktemp("resume")
    rows = [{"problem": f"What is {a} + {a + 1}?", "answer": str(2 * a + 1)} for a in range(16)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = (ROOT / "configs/tiny_cpu.yaml").read_text()
    text, n = re.subn(r"every_n_train_steps: 50", "every_n_train_steps: 1", text)
    assert n == 2, "tiny_cpu.yaml: ModelCheckpoint and HFExport every 50 steps"
    (root / "every_step.yaml").write_text(text)
    return root


def fit_args(setup_dir: Path, model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(setup_dir / "every_step.yaml"), "--model.name_or_path", str(model_dir),
        "--data.source", str(setup_dir / "train.jsonl"), "--trainer.default_root_dir", str(out),
        "--trainer.logger.init_args.save_dir", str(out), "--trainer.max_steps", str(STEPS),
        "--rollout.max_completion_length", "8", "--data.prompts_per_step", "2",
        "--model.grpo.micro_batch_size", "12", "--model.optim.lr", "1e-3",
        # Length-dependent scores even for wrong answers: non-zero advantages from a random model.
        "--rollout.rewards", "[{name: format}, {name: cosine, kwargs: {max_len: 8, gold_field: answer}}]", *extra,
    ]  # fmt: skip


ENV = os.environ | {"PYTHONPATH": str(ROOT), "OPENRS_GRADING_WORKERS": "1", "OMP_NUM_THREADS": "1"}


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


def _row_logged(metrics_csv: Path, step: int) -> bool:
    if not metrics_csv.is_file():
        return False
    with open(metrics_csv, newline="") as f:
        return any(row.get("train/loss") and row.get("step") == str(step) for row in csv.DictReader(f))


def start_and_signal(
    args: list[str], wait_for: Path, sig: int, group: bool = False, logged_step: int | None = None
) -> subprocess.CompletedProcess:
    """Start a fit, send ``sig`` as soon as ``wait_for`` exists (to all its ranks with ``group``), collect output.

    ``logged_step``: also wait until metrics.csv holds that step's row. Lightning saves a step's checkpoint in
    ``on_train_batch_end``, a few milliseconds before it logs the step's metrics, so a kill inside that window loses
    the row (not the training state); see the README's "Run health" section.
    """
    proc = subprocess.Popen(
        [*CLI, *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=group,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    metrics_csv = wait_for.parent.parent / "metrics.csv"

    def ready() -> bool:
        return wait_for.exists() and (logged_step is None or _row_logged(metrics_csv, logged_step))

    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def step_metrics(run_dir: Path, keys: tuple[str, ...] = COMPARED) -> dict[int, dict[str, float]]:
    """metrics.csv rows (``keys``) of the optimizer steps, by step; fails on a step logged twice."""
    by_step: dict[int, dict[str, float]] = {}
    with open(run_dir / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                step = int(row["step"])
                assert step not in by_step, f"step {step} logged twice"
                by_step[step] = {k: float(row[k]) for k in keys}
    return by_step


def max_differences(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]], steps: int = STEPS):
    assert sorted(a) == sorted(b) == list(range(steps))
    return {k: max(abs(a[s][k] - b[s][k]) for s in a) for k in COMPARED}


@pytest.fixture(scope="module")
def uninterrupted(setup_dir: Path, tiny_model_dir: Path) -> dict[int, dict[str, float]]:
    out = setup_dir / "uninterrupted"
    proc = run(fit_args(setup_dir, tiny_model_dir, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = out / "grpo" / "version_0"
    # HF exports next to the checkpoints, the newest two kept, loadable, and equal to the final policy.
    exports = sorted(p.name for p in (run_dir / "hf").iterdir())
    assert exports == [f"step{STEPS - 1}", f"step{STEPS}"]
    final = torch.load(run_dir / "checkpoints" / f"step{STEPS}.ckpt", weights_only=False)["state_dict"]
    exported = AutoModelForCausalLM.from_pretrained(run_dir / "hf" / f"step{STEPS}").state_dict()
    assert all(torch.equal(v, final[f"policy.{k}"]) for k, v in exported.items())
    return moving(step_metrics(run_dir))


def moving(metrics: dict[int, dict[str, float]]) -> dict[int, dict[str, float]]:
    """The compared metrics change from step to step (a comparison of constants would prove nothing)."""
    for key in ("train/reward/mean", "train/loss", "train/kl", "train/grad_norm"):
        assert len({m[key] for m in metrics.values()}) > 2, (key, metrics)
    return metrics


def report(name: str, diffs: dict[str, float]) -> None:
    print(f"\n{name}: max |resumed - uninterrupted| per metric: {json.dumps(diffs)}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_interrupt_saves_and_the_printed_command_resumes_exactly(setup_dir, tiny_model_dir, uninterrupted, sig) -> None:
    name = signal.Signals(sig).name
    out = setup_dir / name
    run_dir = out / "grpo" / "version_0"
    args = fit_args(setup_dir, tiny_model_dir, out)
    first = start_and_signal(args, run_dir / "checkpoints/step2.ckpt", sig)
    assert first.returncode == 128 + sig, first.stderr[-3000:]
    saved = re.search(rf"{name}: saved step (\d+) to (\S+)", first.stderr)
    command = re.search(r"continue with: (openrs-pl .*)", first.stderr)
    assert saved and command, first.stderr[-3000:]
    assert Path(saved.group(2)).exists() and int(saved.group(1)) >= 2
    assert shlex.split(command.group(1))[-2:] == ["--ckpt_path", saved.group(2)]

    resumed = run(shlex.split(command.group(1))[1:])  # exactly the command the message printed
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not re.search("not resumable|will be deleted|exists and is not empty", resumed.stderr), resumed.stderr
    assert sorted(p.name for p in (out / "grpo").iterdir()) == ["version_0"]  # same log folder, no version_1
    diffs = max_differences(step_metrics(run_dir), uninterrupted)
    report(name, diffs)
    assert all(d <= 1e-6 for d in diffs.values()), diffs


@pytest.mark.slow
def test_kill_9_then_resume_from_the_newest_checkpoint_is_exact(setup_dir, tiny_model_dir, uninterrupted) -> None:
    out = setup_dir / "kill9"
    run_dir = out / "grpo" / "version_0"
    args = fit_args(setup_dir, tiny_model_dir, out)
    first = start_and_signal(args, run_dir / "checkpoints/step3.ckpt", signal.SIGKILL, logged_step=2)
    assert first.returncode == -signal.SIGKILL
    newest = max((run_dir / "checkpoints").glob("step*.ckpt"), key=lambda p: int(p.stem[4:]))
    assert version_of(newest) == 0
    resumed = run(fit_args(setup_dir, tiny_model_dir, out, "--ckpt_path", str(newest)))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not re.search("not resumable|will be deleted|exists and is not empty", resumed.stderr), resumed.stderr
    assert sorted(p.name for p in (out / "grpo").iterdir()) == ["version_0"]
    # The progress bar counts steps of the whole run (not "5/2": batches done over steps left).
    assert f" {STEPS}/{STEPS} " in resumed.stdout + resumed.stderr, resumed.stderr[-2000:]  # the bar is on stderr
    diffs = max_differences(step_metrics(run_dir), uninterrupted)
    report(f"kill -9 (resumed from {newest.name})", diffs)
    assert all(d <= 1e-6 for d in diffs.values()), diffs
    assert not math.isnan(sum(diffs.values()))
    shutil.rmtree(out)


@pytest.mark.slow
def test_two_rank_ddp_kill_9_then_resume_is_exact(setup_dir, tiny_model_dir) -> None:
    """2 processes (gloo): the whole process group is killed after step 2's checkpoint, then resumed on 2 ranks."""
    ddp = ("--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_steps", "4")
    base = setup_dir / "ddp_uninterrupted"
    proc = run(fit_args(setup_dir, tiny_model_dir, base, *ddp))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = setup_dir / "ddp_kill9"
    run_dir = out / "grpo" / "version_0"
    first = start_and_signal(
        fit_args(setup_dir, tiny_model_dir, out, *ddp),
        run_dir / "checkpoints/step2.ckpt",
        signal.SIGKILL,
        group=True,
        logged_step=1,
    )
    assert first.returncode == -signal.SIGKILL
    newest = max((run_dir / "checkpoints").glob("step*.ckpt"), key=lambda p: int(p.stem[4:]))
    resumed = run(fit_args(setup_dir, tiny_model_dir, out, *ddp, "--ckpt_path", str(newest)))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not re.search("not resumable|will be deleted|exists and is not empty", resumed.stderr), resumed.stderr
    assert sorted(p.name for p in (out / "grpo").iterdir()) == ["version_0"]
    diffs = max_differences(step_metrics(run_dir), moving(step_metrics(base / "grpo" / "version_0")), steps=4)
    report(f"2-rank DDP kill -9 (resumed from {newest.name})", diffs)
    assert all(d <= 1e-6 for d in diffs.values()), diffs
