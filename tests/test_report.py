"""The report's panel selection and time split (the end-to-end report is in test_watch_run.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from openrs_pl.report import find_log_dir, panels_for, run_cost, time_split


def test_optional_panels_appear_only_when_logged() -> None:
    cols = ["step", "train/reward/mean", "val/pass@1/math500", "val/pass@1/aime24", "train/entropy"]
    panels = {p.name: p for p in panels_for(cols)}
    assert set(panels) == {"reward", "val_pass1", "entropy"}
    assert panels["val_pass1"].columns == ("val/pass@1/aime24", "val/pass@1/math500")


def test_time_split_training_is_the_rest_of_the_step() -> None:
    df = pd.DataFrame(
        {
            "step": [0, 1],
            "train/time/step": [5.0, 4.0],
            "train/time/generation": [2.0, 1.5],
            "train/time/sync": [0.5, 0.5],
        }
    )
    assert time_split(df)["training"].tolist() == [2.5, 2.0]


def test_cost_reads_the_last_elapsed_time() -> None:
    df = pd.DataFrame({"step": [0, 1, 9], "train/time/elapsed": [10.0, 20.0, 720.0]})
    cost = run_cost(df, {"gpus": 4, "max_steps": 100, "usd_per_gpu_hour": 2.0}, gpus=None, usd_per_gpu_hour=None)
    assert (cost.steps_done, cost.gpu_hours, cost.usd) == (10, pytest.approx(0.8), pytest.approx(1.6))
    assert cost.projected_gpu_hours == pytest.approx(8.0)
    assert run_cost(df, {"gpus": 4}, gpus=1, usd_per_gpu_hour=1.0).usd == pytest.approx(0.2)


def test_find_log_dir_picks_the_newest_run(tmp_path) -> None:
    for version in ("version_0", "version_1"):
        (tmp_path / "csv" / version).mkdir(parents=True)
        (tmp_path / "csv" / version / "metrics.csv").write_text("step\n0\n")
    assert find_log_dir(tmp_path) == tmp_path / "csv" / "version_1"
    with pytest.raises(FileNotFoundError, match="no metrics.csv"):
        find_log_dir(tmp_path / "csv" / "nothing_here")
