"""Two DDP trainer ranks (gloo, CPU) and one generator process started by rank 0, generating for both."""

from __future__ import annotations

from pathlib import Path

import pytest
from grpo.test_ddp import run_two_ranks
from transformers import AutoModelForCausalLM, AutoTokenizer

from openrs_pl.rollout.hf_engine import HFEngine
from openrs_pl.rollout.types import SamplingConfig


@pytest.mark.slow
def test_two_trainers_one_generator(tiny_model_dir: Path, tmp_path: Path) -> None:
    layout = ("--rollout.engine", "process", "--rollout.process.mode", "dedicated")
    ranks = run_two_ranks(tiny_model_dir, tmp_path, *layout)
    assert [r["step"] for r in ranks] == [2, 2]
    assert [r["engine"] for r in ranks] == ["ProcessEngine", "NoneType"], "one generator, started by rank 0"
    assert ranks[0]["weights_sha256"] != ranks[0]["initial_sha256"]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]

    # Step 1, from the checkpoint's weights: the generator sampled both ranks' prompts in one request with rank 0's
    # seed (rollout.seed + step x world + rank = 42), and each rank got back exactly its own prompts' groups.
    first = [r["rollouts"][0] for r in ranks]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    engine = HFEngine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    sampling = SamplingConfig(n=6, temperature=0.7, max_tokens=8, seed=42)  # ddp_fit.py's and tiny_cpu.yaml's
    expected = engine.generate(first[0]["prompt_ids"] + first[1]["prompt_ids"], sampling).completion_ids
    assert first[0]["completion_ids"] + first[1]["completion_ids"] == expected
    assert len(first[1]["completion_ids"]) == 6 * len(first[1]["prompt_ids"]) == 12


@pytest.mark.slow
def test_per_rank_generators_sample_what_each_rank_samples_in_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    hf = run_two_ranks(tiny_model_dir, tmp_path / "hf", "--rollout.engine", "hf")
    layout = ("--rollout.engine", "process", "--rollout.process.mode", "per_rank")
    process = run_two_ranks(tiny_model_dir, tmp_path / "process", *layout)
    assert [r["engine"] for r in process] == ["ProcessEngine", "ProcessEngine"], "one generator per rank"
    # Each rank's generator samples that rank's prompts with that rank's seed from the pushed weights: the same
    # completions at every step as the policy sampling itself, hence the same training, bit for bit.
    for mine, reference in zip(process, hf, strict=True):
        assert [s["completion_ids"] for s in mine["rollouts"]] == [s["completion_ids"] for s in reference["rollouts"]]
        assert mine["weights_sha256"] == reference["weights_sha256"]
    assert process[0]["rollouts"][0]["completion_ids"] != process[1]["rollouts"][0]["completion_ids"]
