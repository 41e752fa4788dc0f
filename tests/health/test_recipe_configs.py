"""The shipped configs bound disk use and carry the run-health callbacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))
HEALTH = {"openrs_pl.health.TrainingHealth", "openrs_pl.health.InterruptCheckpoint", "openrs_pl.health.ResumeInPlace"}


def callbacks(config: dict) -> dict[str, dict]:
    return {c["class_path"]: c.get("init_args", {}) for c in config["trainer"]["callbacks"]}


@pytest.mark.parametrize("path", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_config_has_the_health_callbacks_and_atomic_checkpoints(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    assert HEALTH <= callbacks(config).keys()
    assert {"class_path": "openrs_pl.health.AtomicCheckpointIO"} in config["trainer"]["plugins"]


@pytest.mark.parametrize("path", [c for c in CONFIGS if c.name.startswith("openrs_exp")], ids=lambda p: p.name)
def test_recipe_keeps_two_full_checkpoints_and_exports_every_one(path: Path) -> None:
    """~25 GB per ZeRO-2 checkpoint: the newest two by step, plus an HF export (~3.5 GB) of each saved step."""
    cbs = callbacks(yaml.safe_load(path.read_text()))
    ckpt = cbs["lightning.pytorch.callbacks.ModelCheckpoint"]
    assert (ckpt["save_top_k"], ckpt["monitor"], ckpt["mode"], ckpt["save_last"]) == (2, "step", "max", "link")
    assert cbs["openrs_pl.health.HFExport"]["every_n_train_steps"] == ckpt["every_n_train_steps"]
    assert cbs["openrs_pl.health.TrainingHealth"]["on_collapse"] == "rollback"
