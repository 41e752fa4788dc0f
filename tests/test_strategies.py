"""The CPU DeepSpeed strategy's registration and its one configuration check (the 2-rank runs are in
tests/grpo/test_deepspeed.py)."""

from __future__ import annotations

import pytest
from lightning.pytorch.strategies import StrategyRegistry

from openrs_pl import cli  # noqa: F401  (importing the CLI registers the names)
from openrs_pl.strategies import CPUDeepSpeedStrategy


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_cpu_deepspeed_names_are_registered(stage: int) -> None:
    entry = StrategyRegistry[f"deepspeed_stage_{stage}_cpu"]
    assert entry["strategy"] is CPUDeepSpeedStrategy and entry["init_params"] == {"stage": stage}


def test_a_non_cpu_deepspeed_accelerator_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    with pytest.raises(ValueError, match="needs DS_ACCELERATOR=cpu, but it is set to 'cuda'"):
        CPUDeepSpeedStrategy(stage=2)
