"""``scripts/bench_vs_trl.py``: its timing and token counting, option hook, warm start, and the JSON of a tiny run."""

from __future__ import annotations

import doctest
import importlib.util
import json
import statistics
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
    assert result.attempted >= 10 and result.failed == 0


def test_completion_lengths_count_up_to_the_first_eos(bench) -> None:
    eos = 7
    input_ids = torch.tensor([[1, 2, 3], [0, 4, 5]])  # [2, 3], second prompt left-padded
    completions = [[9, 9, eos, 0, 0], [9, 9, 9, 9, 9], [eos, 0, 0, 0, 0], [9, eos, 9, eos, 0]]
    output = torch.cat([input_ids.repeat_interleave(2, dim=0), torch.tensor(completions)], dim=1)  # [4, 8]
    expected = [c.index(eos) + 1 if eos in c else len(c) for c in completions]
    assert bench.completion_lengths(input_ids, output, eos) == expected == [3, 5, 1, 2]


class FakeClock:
    """``time.perf_counter`` that only moves when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_recorder_books_nested_phases_exclusively(bench, monkeypatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(bench.time, "perf_counter", clock)
    rec = bench.StepRecorder()

    def generate() -> str:
        clock.now += 3.0
        return "completions"

    def training_step() -> str:  # TRL's shape: generation and rewards happen inside training_step
        clock.now += 1.0
        assert rec.timed("generation", generate)() == "completions"
        with rec.phase("rewards"):
            clock.now += 0.5
        clock.now += 2.0
        return "loss"

    with rec.phase("sync"):  # outside any step: not booked
        clock.now += 9.0
    rec.begin()
    assert rec.timed("train", training_step)() == "loss"
    rec.open("train")
    clock.now += 0.25
    rec.close()
    clock.now += 0.1
    rec.end()
    assert dict(rec.phases[0]) == {"generation": 3.0, "rewards": 0.5, "train": 3.25}
    assert rec.ends[0] - rec.begins[0] == pytest.approx(6.85)


def test_summarise_rejects_misaligned_or_too_short_runs(bench) -> None:
    rec = bench.StepRecorder()
    rec.begins, rec.ends = [0.0, 1.0], [1.0]
    with pytest.raises(RuntimeError, match="2 steps began but 1 ended"):
        bench.summarise(rec, warmup=0, max_completion_length=8)
    rec.ends = [1.0, 2.0]
    rec.phases, rec.lengths, rec.prompt_tokens = [{}, {}], [[4], [4]], [8, 8]
    with pytest.raises(ValueError, match="none left after 2 warm-up steps"):
        bench.summarise(rec, warmup=2, max_completion_length=8)
    rec.lengths = [[4], []]
    with pytest.raises(RuntimeError, match="produced no completions"):
        bench.summarise(rec, warmup=1, max_completion_length=8)


def test_option_hook_accepts_the_config_and_skips_what_is_missing(bench) -> None:
    by_name = {s.name: s for s in bench.SETTINGS}
    for name in ("trl-1t", "trl-2t", "ours-hf-1t", "ours-hf-2t", "ours-vllm-1t", "ours-vllm-2t"):
        assert bench.missing_option(by_name[name].overrides) is None, name
    assert by_name["ours-vllm-2t"].overrides == {"rollout.engine": "vllm"} and by_name["trl-2t"].threads == 2
    process_vllm = by_name["ours-process-vllm-overlap-packed-2t"]
    assert bench.missing_option(process_vllm.overrides) is None and process_vllm.trainer_threads == 1
    assert "is not one of ('hf', 'vllm')" in bench.missing_option({"rollout.process.generator": "tgi"})
    assert bench.missing_option({"grpo.logprob_chunk_size": 8, "rollout.vllm.dtype": "float32"}) is None
    assert bench.missing_option({"grpo.no_such": 1}) == "grpo.no_such: no such option"
    assert bench.missing_option({"rollout.vllm.no_such": 1}) == "rollout.vllm.no_such: no such option"
    assert "is not one of" in bench.missing_option({"grpo.loss_type": "nope"})
    with pytest.raises(ValueError, match="must start with rollout. or grpo."):
        bench.missing_option({"trainer.devices": 2})


def test_compare_bests_needs_both_sides(bench) -> None:
    settings = [bench.BenchSetting("t", "trl", 1), bench.BenchSetting("o", "ours", 1)]
    assert bench.compare_bests({"t": {"median_s_per_step": 1.0, "peak_rss_tree_mib": 1.0}}, settings) is None


def test_warm_start_targets_spread_and_end_with_eos(bench, tiny_model_dir, tmp_path) -> None:
    lengths = bench.target_lengths(400, 64, seed=1)
    assert min(lengths) >= 8 and max(lengths) <= 80 and statistics.pstdev(lengths) > 15
    assert bench.target_lengths(400, 64, seed=1) == lengths != bench.target_lengths(400, 64, seed=2)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = bench.select_problems(tokenizer, count=4, target_len=60, tolerance=8)
    losses = bench.warm_start(tiny_model_dir, tmp_path / "warm", rows, steps=4, seed=0, max_len=32)
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert (tmp_path / "warm" / "config.json").exists() and (tmp_path / "warm" / "tokenizer.json").exists()


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
        bench.parse_args(["--models", "A,Z", "--settings", "trl-1t,nope"])
    assert "unknown model(s)/setting(s): ['Z', 'nope']" in capsys.readouterr().err
    assert [s.name for s in bench.parse_args([]).settings] == [s.name for s in bench.SETTINGS]


@pytest.mark.slow
def test_tiny_run_json_is_consistent(bench, tmp_path) -> None:
    pytest.importorskip("trl", reason="trl is not installed (pip install -e '.[bench]')")
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    names = ["trl-1t", "ours-hf-1t", "ours-vllm-overlap-packed-ref-2t"]  # TRL, ours synchronous, ours overlapped
    argv = ["--models", "A", "--settings", ",".join(names), "--steps", "2", "--warmup", "1"]
    argv += ["--max-completion-length", "12", "--warm-start-steps", "3", "--no-loss-check"]
    report = bench.main([*argv, "--out", str(out), "--markdown", str(md)])
    assert json.loads(out.read_text()) == report and "partial" not in report
    assert report["settings"]["loss_type"] == "bnpo" and report["settings"]["max_completion_length"] == 12
    (result,) = report["results"]
    assert result["warm_start_steps"] == 3 and len(result["warm_start_loss"]) == 2
    ran = result["settings"]
    by_name = {s.name: s for s in bench.SETTINGS}
    expected_skips = {n for n in names if bench.missing_option(by_name[n].overrides)}
    assert set(result["skipped"]) == expected_skips and set(ran) == set(names) - expected_skips
    assert {"trl-1t", "ours-hf-1t"} <= set(ran) and result["failed"] == {}
    for name, s in ran.items():
        steps = s["step_times"]
        assert s["threads"] == (1 if name.endswith("1t") else 2)
        assert s["trainer_threads"] == (by_name[name].trainer_threads or s["threads"])
        assert s["measured_steps"] == 1 and len(steps) == 2 and s["completions_per_step"] == 8
        assert (
            s["median_s_per_step"] == pytest.approx(steps[1], abs=1e-3) == pytest.approx(s["mean_s_per_step"], abs=1e-3)
        )
        assert s["steps_per_s"] == pytest.approx(1 / s["median_s_per_step"], rel=1e-3)
        # The split is measured phase by phase; only "other" is the remainder and it must be small and >= 0.
        split = s["split_s"]
        assert sum(split.values()) == pytest.approx(s["mean_s_per_step"], abs=2e-3)
        assert -2e-3 <= split["other"] <= 0.1 * s["mean_s_per_step"] + 0.05, split
        assert split["generation"] > 0 and split["rewards"] > 0 and split["train"] > 0
        # weights move to an engine with its own copy: vLLM, the generator process, or the overlapped engine's policy
        overlap = s["overrides"].get("rollout.overlap", False)
        pushes = s["overrides"].get("rollout.engine") in ("vllm", "process") or overlap
        assert (split["sync"] > 0) == (s["side"] == "ours" and pushes)
        assert s["trainer_idle_fraction"] == pytest.approx(split["generation"] / s["mean_s_per_step"], abs=2e-3)
        # The generator's clock: TRL's is the generation phase; ours is the engine's own, inside that phase when
        # synchronous, and running during the step's training (so not bounded by the trainer's wait) with overlap.
        busy = s["generator_busy_s"]
        # Clamped at 0: overlapped, a generation that began in the step before can end inside the measured one.
        assert s["generator_idle_fraction"] == pytest.approx(max(0.0, 1 - busy / s["mean_s_per_step"]), abs=2e-3)
        if s["side"] == "trl":
            assert busy == pytest.approx(split["generation"], abs=1e-3)
        elif not overlap:
            assert 0.5 * split["generation"] < busy <= split["generation"] + 1e-3
        else:
            assert busy > 0 and 0 <= s["trainer_idle_fraction"] <= 1
        length = s["completion_len"]
        assert 1 <= length["min"] <= length["median"] <= length["max"] <= 12 and 0 <= length["at_limit_fraction"] <= 1
        tokens = length["mean"] * 8
        assert s["completion_tok_per_s"] == pytest.approx(tokens / steps[1], rel=0.01)
        assert s["generation_tok_per_s"] == pytest.approx(tokens / busy, rel=0.01)  # the generator's own throughput
        assert s["peak_rss_mib"] > 100 and s["peak_rss_tree_mib"] >= 0.9 * s["peak_rss_mib"]
    # Same prompts, same chat template on both sides.
    assert abs(ran["ours-hf-1t"]["mean_prompt_len"] - ran["trl-1t"]["mean_prompt_len"]) <= 2 * 4
    best = result["best"]
    ours_best = min((n for n in ran if ran[n]["side"] == "ours"), key=lambda n: ran[n]["median_s_per_step"])
    assert best["trl_best"] == "trl-1t" and best["ours_best"] == ours_best
    ours, trl = ran[ours_best], ran["trl-1t"]
    assert best["steps_per_s_ratio"] == pytest.approx(ours["steps_per_s"] / trl["steps_per_s"], rel=1e-2)
    assert best["peak_rss_tree_ratio"] == pytest.approx(ours["peak_rss_tree_mib"] / trl["peak_rss_tree_mib"], rel=1e-2)
    table = md.read_text()
    assert all(f"| {n} |" in table for n in ran) and f"**{best['steps_per_s_ratio']}**" in table
