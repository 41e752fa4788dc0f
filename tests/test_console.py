"""Quieting keeps real warnings; the bar's fields come from the logged metric names."""

from __future__ import annotations

import logging
import warnings
from types import SimpleNamespace

import pytest

from openrs_pl.console import BAR_FIELDS, bar_metrics, count_gpus, quiet_third_party
from openrs_pl.grpo.module import __doc__ as module_doc


def test_quiet_filters_known_noise_and_keeps_real_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENRS_PL_VERBOSE", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", DeprecationWarning, stacklevel=1)
        warnings.warn("Using ModelCheckpoint with manual optimization and every_n_train_steps, but ...", stacklevel=1)
        warnings.warn("The number of training batches (3) is smaller than the logging interval", stacklevel=1)
    assert [str(w.message)[:26] for w in caught] == ["The number of training bat"]
    assert logging.getLogger("lightning.pytorch.utilities.rank_zero").level == logging.WARNING


def test_verbose_keeps_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENRS_PL_VERBOSE", "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", DeprecationWarning, stacklevel=1)
    assert len(caught) == 1


def test_bar_shows_accuracy_or_cosine_and_skips_missing() -> None:
    assert bar_metrics({"train/rewards/cosine/mean": 0.25}) == {"acc": "0.250"}
    assert bar_metrics({}) == {}


def test_bar_fields_are_metrics_the_module_logs() -> None:
    documented = module_doc.replace("\n", " ")
    for keys in BAR_FIELDS.values():
        leaf = keys[0].removeprefix("train/")
        # accuracy is logged as rewards/<name>/mean; the others are named in the module's docstring
        assert leaf.startswith("rewards/") or leaf.split("/")[-1] in documented, leaf


def test_gpu_count_adds_a_dedicated_generator_gpu() -> None:
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

    from openrs_pl.rewards import RewardSpec
    from openrs_pl.rollout.callback import RolloutCallback
    from openrs_pl.rollout.process_engine import ProcessEngineConfig
    from openrs_pl.rollout.vllm_config import VLLMConfig

    def trainer(accelerator: object, *callbacks: object) -> SimpleNamespace:
        return SimpleNamespace(accelerator=accelerator, world_size=3, device_ids=[0, 1, 2], callbacks=list(callbacks))

    rewards = [RewardSpec("format")]
    # The paper's layout: three trainer GPUs + one vLLM GPU = 4 GPUs billed.
    assert count_gpus(trainer(CUDAAccelerator(), RolloutCallback(rewards, engine="vllm"))) == 4
    colocated = RolloutCallback(rewards, engine="vllm", vllm=VLLMConfig(mode="colocate"))
    assert count_gpus(trainer(CUDAAccelerator(), colocated)) == 3
    assert count_gpus(trainer(CUDAAccelerator(), RolloutCallback(rewards, engine="hf"))) == 3
    assert count_gpus(trainer(CPUAccelerator(), RolloutCallback(rewards, engine="vllm"))) == 0

    # A generator process adds a GPU only when it has one of its own.
    def process(device: str | None) -> RolloutCallback:
        return RolloutCallback(rewards, engine="process", process=ProcessEngineConfig(device=device))

    assert count_gpus(trainer(CUDAAccelerator(), process("cuda:3"))) == 4
    assert count_gpus(trainer(CUDAAccelerator(), process("cuda:1"))) == 3
    assert count_gpus(trainer(CUDAAccelerator(), process(None))) == 3
    assert count_gpus(trainer(CUDAAccelerator(), process("cpu"))) == 3


def test_negative_price_is_rejected() -> None:
    from openrs_pl.console import RunConsole

    with pytest.raises(ValueError, match="usd_per_gpu_hour must be >= 0"):
        RunConsole(usd_per_gpu_hour=-0.5)
