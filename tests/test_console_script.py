"""The installed ``openrs-pl`` console script: exit statuses of ``fit``, and ``export`` failing in one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from openrs_pl.cli import main

ROOT = Path(__file__).parents[1]
CONSOLE_SCRIPT = Path(sys.executable).parent / "openrs-pl"


def openrs_pl(*args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(ROOT), "OPENRS_GRADING_WORKERS": "1"}
    return subprocess.run([str(CONSOLE_SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def fit_args(model_dir: Path, data: Path, out: Path) -> list[str]:
    every_step = out / "every_step.yaml"
    checkpoint = {"every_n_train_steps": 1, "filename": "step{step}", "auto_insert_metric_name": False}
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": checkpoint}]
    every_step.write_text(json.dumps({"trainer": {"callbacks": callbacks}}))
    return [
        "fit", "--config", "configs/tiny_cpu.yaml", "--config", str(every_step), "--model.name_or_path", str(model_dir),
        "--data.source", str(data), "--trainer.max_steps", "1", "--trainer.default_root_dir", str(out),
        "--trainer.logger.init_args.save_dir", str(out), "--trainer.enable_progress_bar", "false",
        "--rollout.max_completion_length", "8", "--data.prompts_per_step", "2",
        "--model.grpo.micro_batch_size", "12",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def fitted(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """``openrs-pl fit`` of one step on the tiny model; returns the process and its step-1 checkpoint."""
    out = tmp_path_factory.mktemp("fit")
    data = out / "train.jsonl"
    data.write_text(
        "".join(json.dumps({"problem": f"What is {a} + 1?", "answer": str(a + 1)}) + "\n" for a in range(8))
    )
    proc = openrs_pl(*fit_args(tiny_model_dir, data, out))
    return proc, next(out.rglob("step1.ckpt"), out / "missing.ckpt")


@pytest.mark.slow
def test_fit_exits_0_on_success(fitted: tuple[subprocess.CompletedProcess, Path]) -> None:
    proc, ckpt = fitted
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ckpt.is_file()


@pytest.mark.slow
def test_fit_exits_non_zero_on_failure(tiny_model_dir: Path, tmp_path: Path) -> None:
    proc = openrs_pl(*fit_args(tiny_model_dir, tmp_path / "no_such_data.jsonl", tmp_path))
    assert proc.returncode != 0
    assert "no_such_data.jsonl" in proc.stderr


@pytest.mark.slow
def test_export_works_from_the_checkpoint_alone(
    fitted: tuple[subprocess.CompletedProcess, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The base-model folder has "moved": the checkpoint's own config and tokenizer files are used.
    ckpt = torch.load(fitted[1], map_location="cpu", weights_only=False)
    ckpt["hyper_parameters"]["name_or_path"] = str(tmp_path / "moved_away")
    moved = tmp_path / "moved.ckpt"
    torch.save(ckpt, moved)
    assert main(["export", str(moved), str(tmp_path / "hf")]) == 0
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    for name, tensor in exported.state_dict().items():
        assert torch.equal(tensor, ckpt["state_dict"][f"policy.{name}"]), name
    assert (tmp_path / "hf" / "tokenizer.json").exists()
    # A checkpoint without those files (older openrs-pl) whose base folder is gone: one line saying so.
    del ckpt["hf_files"]
    torch.save(ckpt, moved)
    capsys.readouterr()
    assert main(["export", str(moved), str(tmp_path / "hf2")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "moved_away" in err and "cannot be loaded" in err


@pytest.mark.slow
def test_export_failures_are_one_line(
    fitted: tuple[subprocess.CompletedProcess, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    existing_file = tmp_path / "out.txt"
    existing_file.write_text("keep me")
    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("not a checkpoint")
    cases = [
        ([str(fitted[1]), str(existing_file)], "is an existing file"),
        ([str(not_a_checkpoint), str(tmp_path / "hf")], "is not a checkpoint written by `openrs-pl fit`"),
        ([str(tmp_path / "missing.ckpt"), str(tmp_path / "hf")], "does not exist"),
        ([str(tmp_path), str(tmp_path / "hf")], "not a DeepSpeed checkpoint"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert main(["export", *args]) == 1, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (args, err)
    assert existing_file.read_text() == "keep me"


def test_export_help_documents_its_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: openrs-pl export" in out and "checkpoint" in out and "DeepSpeed" in out and "out_dir" in out
