"""The CPU DeepSpeed strategy's registration and its one configuration check (the 2-rank runs are in
tests/grpo/test_deepspeed.py)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from lightning.pytorch.strategies import StrategyRegistry

from openrs_pl import cli  # noqa: F401  (importing the CLI registers the names)
from openrs_pl.strategies import CPUDeepSpeedStrategy


@pytest.fixture(autouse=True)
def own_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """The strategy writes DS_ACCELERATOR into os.environ: give each test its own copy."""
    monkeypatch.setattr(os, "environ", dict(os.environ))


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_cpu_deepspeed_names_are_registered(stage: int) -> None:
    entry = StrategyRegistry[f"deepspeed_stage_{stage}_cpu"]
    assert entry["strategy"] is CPUDeepSpeedStrategy and entry["init_params"] == {"stage": stage}


def test_a_non_cpu_deepspeed_accelerator_is_refused() -> None:
    os.environ["DS_ACCELERATOR"] = "cuda"
    with pytest.raises(ValueError, match="needs DS_ACCELERATOR=cpu, but it is set to 'cuda'"):
        CPUDeepSpeedStrategy(stage=2)


def test_the_strategy_selects_deepspeeds_cpu_accelerator() -> None:
    # Set at construction, i.e. before the launcher starts the other ranks (they inherit it) and before DeepSpeed
    # picks its accelerator (auto-detection would pick CUDA on a GPU machine).
    os.environ.pop("DS_ACCELERATOR", None)
    CPUDeepSpeedStrategy(stage=2)
    assert os.environ["DS_ACCELERATOR"] == "cpu"


def test_an_already_chosen_gpu_accelerator_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from deepspeed.accelerator import real_accelerator

    monkeypatch.setattr(real_accelerator, "ds_accelerator", SimpleNamespace(device_name=lambda: "cuda"))
    with pytest.raises(RuntimeError, match="already uses its 'cuda' accelerator"):
        CPUDeepSpeedStrategy(stage=2)


@pytest.mark.parametrize("shm_comm", [False, True])
def test_deepspeeds_shm_comm_op_is_left_to_deepspeed_only_when_asked(
    monkeypatch: pytest.MonkeyPatch, shm_comm: bool
) -> None:
    import deepspeed.ops

    ops = deepspeed.ops.__compatible_ops__  # what DeepSpeed's torch backend reads before JIT-building the op
    monkeypatch.setitem(ops, "deepspeed_shm_comm", True)  # as on a machine with a C++ compiler
    seen: list[bool] = []
    monkeypatch.setattr(CPUDeepSpeedStrategy, "set_world_ranks", lambda self: None)
    monkeypatch.setattr(
        CPUDeepSpeedStrategy, "_init_deepspeed_distributed", lambda self: seen.append(ops["deepspeed_shm_comm"])
    )
    CPUDeepSpeedStrategy(stage=2, shm_comm=shm_comm).setup_distributed()
    assert seen == [shm_comm]
