"""``scripts/bench_vs_trl.py``: its token counting, statistics, prompt selection and the JSON of a 1-step run."""

from __future__ import annotations

import doctest
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_vs_trl.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_vs_trl", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_vs_trl"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_vs_trl"]


def test_doctests_pass(bench) -> None:
    result = doctest.testmod(bench)
    assert result.attempted >= 3 and result.failed == 0


def test_meter_counts_completion_tokens_up_to_first_eos(bench) -> None:
    eos = 7
    input_ids = torch.tensor([[1, 2, 3], [0, 4, 5]])  # [2, 3], second prompt left-padded
    attention_mask = torch.tensor([[1, 1, 1], [0, 1, 1]])  # [2, 3]
    completions = [[9, 9, eos, 0, 0], [9, 9, 9, 9, 9], [eos, 0, 0, 0, 0], [9, eos, 9, eos, 0]]
    prompts = input_ids.repeat_interleave(2, dim=0)  # [4, 3], num_return_sequences=2
    output = torch.cat([prompts, torch.tensor(completions)], dim=1)  # [4, 8]
    meter = bench.GenerationMeter(eos_token_id=eos)
    meter.record(input_ids, attention_mask, output, seconds=0.5)
    expected = sum(c.index(eos) + 1 if eos in c else len(c) for c in completions)
    assert meter.completion_tokens == [expected] == [3 + 5 + 1 + 2]
    assert meter.prompt_tokens == [(3 + 2) * 2]
    assert meter.rows == [4] and meter.seconds == [0.5]


def test_meter_wraps_generate_and_keeps_its_output(bench) -> None:
    class Model:
        def generate(self, input_ids, attention_mask):
            return torch.cat([input_ids, torch.full((input_ids.shape[0], 4), 3)], dim=1)  # [B, P+4]

    model, meter = Model(), bench.GenerationMeter(eos_token_id=0)
    meter.install(model)
    out = model.generate(input_ids=torch.ones(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 5))
    assert out.shape == (2, 9)
    assert meter.completion_tokens == [8] and meter.prompt_tokens == [10] and meter.rows == [2]


def test_summarise_rejects_misaligned_or_too_short_runs(bench) -> None:
    clock, meter = bench.StepClock(), bench.GenerationMeter(eos_token_id=0)
    clock.begins, clock.ends = [0.0, 1.0], [1.0, 2.0]
    meter.seconds, meter.rows, meter.completion_tokens, meter.prompt_tokens = [0.5], [8], [80], [8]
    with pytest.raises(RuntimeError, match="2 steps but 1 generate calls"):
        bench.summarise(clock, meter, warmup=0)
    meter.seconds, meter.rows, meter.completion_tokens, meter.prompt_tokens = [0.5] * 2, [8] * 2, [80] * 2, [8] * 2
    with pytest.raises(ValueError, match="none left after 2 warm-up steps"):
        bench.summarise(clock, meter, warmup=2)


def test_select_problems_keeps_prompts_near_the_target_length(bench, tiny_model_dir) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = bench.select_problems(tokenizer, count=5, target_len=60, tolerance=3)
    assert len(rows) == 5 and len({r["problem"] for r in rows}) == 5
    for row in rows:
        # The tokenization TRL does for a conversational prompt, independent of the script's own.
        messages = [{"role": "user", "content": row["problem"]}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        assert abs(len(ids["input_ids"]) - 60) <= 3
    with pytest.raises(ValueError, match="problems have prompts of 3 \\+- 0 tokens"):
        bench.select_problems(tokenizer, count=1, target_len=3, tolerance=0)


def test_parse_args_rejects_bad_runs(bench, capsys) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--steps", "2", "--warmup", "2"])
    assert "--steps (2) must exceed --warmup (2)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--models", "A,Z"])
    assert "unknown model(s)/side(s): ['Z']" in capsys.readouterr().err


@pytest.mark.slow
def test_one_step_run_writes_both_sides(bench, tmp_path) -> None:
    pytest.importorskip("trl", reason="trl is not installed (pip install -e '.[bench]')")
    out = tmp_path / "bench.json"
    report = bench.main(
        ["--models", "A", "--steps", "1", "--warmup", "0", "--max-completion-length", "8", "--out", str(out)]
    )
    assert json.loads(out.read_text()) == report
    assert report["settings"]["threads"] == 1 and report["settings"]["loss_type"] == "bnpo"
    (result,) = report["results"]
    ours, trl = result["ours"], result["trl"]
    for side in (ours, trl):
        assert side["measured_steps"] == 1 and side["completions_per_step"] == 8 and side["threads"] == 1
        assert 0 < side["mean_completion_len"] <= 8
        assert side["peak_rss_mib"] > 100 and side["peak_rss_tree_mib"] >= side["peak_rss_mib"]
        assert side["median_s_per_step"] == pytest.approx(side["step_times"][0], abs=1e-3)
        tokens = side["mean_completion_len"] * 8
        assert side["completion_tok_per_s"] == pytest.approx(tokens / side["step_times"][0], rel=0.01)
    # Same prompts, same chat template: the prompt token counts agree across trainers.
    assert abs(ours["mean_prompt_len"] - trl["mean_prompt_len"]) <= 2 * 4
    ratio = result["ratio_ours_over_trl"]
    assert ratio["median_s_per_step"] == pytest.approx(ours["median_s_per_step"] / trl["median_s_per_step"], rel=1e-2)
    assert ratio["peak_rss_mib"] == pytest.approx(ours["peak_rss_mib"] / trl["peak_rss_mib"], rel=1e-2)
