"""GPU-hours and dollars against a hand computation, including the paper's own run."""

from __future__ import annotations

import pytest

from openrs_pl.cost import PAPER_USD_PER_GPU_HOUR, RunCost


def test_paper_run_costs_42_dollars() -> None:
    # 4 x A40 for 24 h (arXiv:2503.16219, Table 3): 96 GPU-hours -> $42.
    cost = RunCost(gpus=4, steps_done=100, max_steps=100, elapsed_s=24 * 3600, usd_per_gpu_hour=PAPER_USD_PER_GPU_HOUR)
    assert (cost.gpu_hours, cost.usd) == (96.0, pytest.approx(42.0))


def test_projection_is_linear_in_steps() -> None:
    cost = RunCost(gpus=4, steps_done=50, max_steps=500, elapsed_s=1800.0, usd_per_gpu_hour=1.5)
    assert cost.gpu_hours == pytest.approx(2.0)  # 4 GPUs x 0.5 h
    assert cost.projected_gpu_hours == pytest.approx(20.0) and cost.projected_usd == pytest.approx(30.0)
    assert "projected to max_steps=500: 20.00 GPU-hours = $30.00" in cost.lines()[1]


def test_no_step_done_projects_nothing_and_cpu_costs_nothing() -> None:
    assert RunCost(4, 0, 500, 10.0, 1.0).projected_usd == 0.0
    assert RunCost(0, 3, 3, 7.0, 1.0).lines() == ["no GPU used: 0.002 h of CPU time, $0 at GPU prices"]
