"""A real tiny run through the installed ``openrs-pl`` script with CSV, TensorBoard and W&B (offline) loggers:
the console it prints, what each logger holds, the completions table, and ``openrs-pl report`` on its directory."""

from __future__ import annotations

import csv
import html
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

OPENRS_PL = str(Path(sys.executable).parent / "openrs-pl")
STEPS, PROMPTS, G, MAX_LEN = 3, 2, 6, 12
LOGGERS = """
trainer:
  logger:
    - class_path: lightning.pytorch.loggers.CSVLogger
      init_args: {{save_dir: {out}, name: csv}}
    - class_path: lightning.pytorch.loggers.TensorBoardLogger
      init_args: {{save_dir: {out}, name: tb}}
    - class_path: lightning.pytorch.loggers.WandbLogger
      init_args: {{save_dir: {out}, project: openrs-pl-test, offline: true}}
completions: {{every_n_steps: 2, max_rows: 12}}
"""


def worktree_env() -> dict[str, str]:
    """The console script imports this checkout's openrs_pl, whatever the venv's install points to."""
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def write_problems(path: Path, n: int = 16) -> Path:
    rows = [{"problem": f"What is {a} + {a + 1}?", "answer": str(2 * a + 1)} for a in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


THIRD_PARTY_NOISE = ("Tip:", "LeafSpec", "Loading weights", "manual optimization", "GPU available", "DeepSpeed")


@pytest.fixture(scope="module")
def watched_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("watched")
    (out / "loggers.yaml").write_text(LOGGERS.format(out=out))
    env = {**worktree_env(), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run(
        [
            OPENRS_PL, "fit", "--config", "configs/tiny_cpu.yaml", "--config", str(out / "loggers.yaml"),
            "--model.name_or_path", str(tiny_model_dir), "--data.source", str(write_problems(out / "train.jsonl")),
            "--trainer.max_steps", str(STEPS), "--trainer.default_root_dir", str(out),
            "--rollout.max_completion_length", str(MAX_LEN), "--data.prompts_per_step", str(PROMPTS),
            "--model.grpo.micro_batch_size", "6",
        ],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout + proc.stderr


@pytest.mark.slow
def test_console_is_quiet_and_summarises(watched_run: tuple[Path, str]) -> None:
    out, console = watched_run
    noise = [n for n in THIRD_PARTY_NOISE if n in console]
    assert not noise, f"third-party noise on the console: {noise}\n{console}"
    assert f"1 ranks x {PROMPTS} prompts x {G} completions = {PROMPTS * G}" in console
    assert f"{STEPS} optimizer steps" in console and "rollout engine  hf" in console
    assert "GRPO: 100%" in console and f"{STEPS}/{STEPS}" in console  # the bar counts optimizer steps
    for field in ("reward=", "acc=", "len=", "clip=", "kl="):
        assert field in console, field
    assert f"done: {STEPS} steps in" in console and "no GPU used" in console
    # The end summary averages the first and the last 10 steps: here both windows are the whole 3-step run.
    metrics = csv.DictReader((out / "csv" / "version_0" / "metrics.csv").open())
    rewards = [float(r["train/reward/mean"]) for r in metrics if r["train/reward/mean"]]
    mean = f"{sum(rewards) / len(rewards):.3f}"
    assert f"first 10 -> last 10 steps: reward {mean} -> {mean}" in console
    assert f"openrs-pl report {out / 'csv' / 'version_0'}" in console


@pytest.mark.slow
def test_every_logger_holds_the_metrics(watched_run: tuple[Path, str]) -> None:
    out, _ = watched_run
    rows = list(csv.DictReader((out / "csv" / "version_0" / "metrics.csv").open()))
    assert len([r for r in rows if r["train/reward/mean"]]) == STEPS
    assert all(float(r["train/time/step"]) > 0 for r in rows if r["train/time/step"])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb" / "version_0")).Reload()
    assert len(events.Scalars("train/reward/mean")) == STEPS
    assert len(events.Scalars("train/completions/clipped_ratio")) == STEPS

    (run,) = (out / "wandb").glob("offline-run-*")
    history = list(wandb_history(next(run.glob("run-*.wandb"))))
    rewards = [h["train/reward/mean"] for h in history if "train/reward/mean" in h]
    assert rewards == pytest.approx([float(r["train/reward/mean"]) for r in rows if r["train/reward/mean"]])
    logged_tables = [h for h in history if h.get("completions/_type") == "table-file"]
    assert [h["completions/nrows"] for h in logged_tables] == [12, 12]  # steps 1 and 2: every 2, plus the first
    tables = sorted((run / "files" / "media" / "table").glob("completions_*.table.json"))
    assert len(tables) == 2
    table = json.loads(tables[-1].read_text())
    assert {"prompt", "completion", "reward", "advantage", "length", "truncated", "reward/accuracy"} <= set(
        table["columns"]
    )
    assert len(table["data"]) == 12


@pytest.mark.slow
def test_completions_table_matches_the_rewards(watched_run: tuple[Path, str]) -> None:
    out, _ = watched_run
    log_dir = out / "csv" / "version_0"
    rows = [json.loads(line) for line in (log_dir / "completions.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in rows}) == [1, 2] and len(rows) == 2 * PROMPTS * G
    problems = [json.loads(line)["problem"] for line in (out / "train.jsonl").read_text().splitlines()]
    for r in rows:
        # tiny_cpu.yaml: format weight 1.0, accuracy weight 2.0
        assert r["reward"] == pytest.approx(1.0 * r["reward/format"] + 2.0 * r["reward/accuracy"])
        assert 0 < r["length"] <= MAX_LEN and (not r["truncated"] or r["length"] == MAX_LEN)
        assert r["prompt"] in problems
    for i in range(0, len(rows), G):  # a group shares its prompt; group-relative advantages sum to 0
        group = rows[i : i + G]
        assert len({r["prompt"] for r in group}) == 1
        assert sum(r["advantage"] for r in group) == pytest.approx(0.0, abs=1e-5)
    with (log_dir / "completions.csv").open() as f:
        assert [r["completion"] for r in csv.DictReader(f)] == [r["completion"] for r in rows]


def wandb_history(path: Path) -> Iterator[dict[str, Any]]:
    """The ``history`` rows of an offline W&B run file (W&B's LevelDB-style log of protobuf ``Record``s).

    Layout: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks of chunks, each with a 7-byte header
    (crc32 uint32, length uint16, type uint8: 1 full, 2 first, 3 middle, 4 last); block tails < 7 bytes are padding.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunks = 7, 32768, []
    while pos + 7 <= len(data):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (kind == 0 and length == 0):
            pos += left
            continue
        chunks.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            if record.WhichOneof("record_type") == "history":
                yield {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_report_on_the_run(watched_run: tuple[Path, str]) -> None:
    out, _ = watched_run
    log_dir = out / "csv" / "version_0"
    proc = subprocess.run(
        [OPENRS_PL, "report", str(out), "--gpus", "4", "--usd-per-gpu-hour", "0.4375"],
        capture_output=True, text=True, timeout=300, env=worktree_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    page = (log_dir / "report" / "index.html").read_text()
    expected = {
        "reward": "total reward", "reward_accuracy": "reward: accuracy", "reward_format": "reward: format",
        "length": "completion length", "kl": "KL to the reference", "clip_ratio": "clip ratios",
        "grad_norm": "gradient norm", "lr": "learning rate", "time": "generation / training / sync",
    }  # fmt: skip
    for name, title in expected.items():
        assert title in page and f'src="{name}.png"' in page, name
        width, height = png_size(log_dir / "report" / f"{name}.png")
        assert width > 100 and height > 100
    # Not logged by this run, so no panel (the resolved config below may still name entropy options).
    assert 'src="val_pass1.png"' not in page and 'src="entropy.png"' not in page
    # Cost by hand from the metrics CSV: 4 GPUs x elapsed hours x $0.4375, projected to max_steps.
    rows = [r for r in csv.DictReader((log_dir / "metrics.csv").open()) if r["train/time/elapsed"]]
    hours = 4 * float(rows[-1]["train/time/elapsed"]) / 3600
    assert f"GPU-hours so far: {hours:.2f}" in page and f"= ${hours * 0.4375:.2f} at $0.4375/GPU-h" in page
    assert f"projected to max_steps={STEPS}: {hours:.2f} GPU-hours" in page  # the run is complete
    assert "num_generations: 6" in page  # the resolved config
    completion = json.loads((log_dir / "completions.jsonl").read_text().splitlines()[0])["completion"]
    assert html.escape(completion) in page  # a sample completion


def test_report_on_a_folder_without_a_run(tmp_path: Path) -> None:
    proc = subprocess.run(
        [OPENRS_PL, "report", str(tmp_path)], capture_output=True, text=True, timeout=120, env=worktree_env()
    )
    assert proc.returncode == 2 and "no metrics.csv" in proc.stderr
