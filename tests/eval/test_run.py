"""``openrs-pl eval``: a scripted engine (exact scores, resume, outputs), then real engines end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import pytest
from jsonargparse import ArgumentError
from transformers import AutoTokenizer

from openrs_pl.data.benchmarks import BENCHMARKS, load_benchmark
from openrs_pl.eval.manifest import MANIFEST_FILE, StaleOutputError
from openrs_pl.eval.records import COMPLETIONS_FILE, read_records
from openrs_pl.eval.report import PAPER_TABLE1
from openrs_pl.eval.run import EvalConfig, build_parser, config_to_argv, main, run_eval
from openrs_pl.metrics.passk import pass_at_k

from .scripted import ScriptedEngine

LIMIT = 2
BENCHES = ["aime24", "amc23", "math500"]


@pytest.fixture()
def engine(tiny_model_dir: Path) -> ScriptedEngine:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    problems = {r["problem"]: r["answer"] for b in BENCHES for r in load_benchmark(b)[:LIMIT]}
    return ScriptedEngine(tokenizer, problems)


def _cfg(tiny_model_dir: Path, out: Path, samples: int) -> EvalConfig:
    return EvalConfig(
        model=str(tiny_model_dir),
        benchmarks=BENCHES,
        samples=samples,
        limit=LIMIT,
        output_dir=str(out),
        chunk_problems=4,
    )


def test_scores_match_the_records(tiny_model_dir: Path, tmp_path: Path, engine: ScriptedEngine) -> None:
    results = run_eval(_cfg(tiny_model_dir, tmp_path, samples=3), engine=engine)
    records = [json.loads(line) for line in (tmp_path / COMPLETIONS_FILE).read_text().splitlines()]
    assert len(records) == len(BENCHES) * LIMIT * 3
    # Integer golds (AIME/AMC) must grade right when answered and wrong otherwise; their pass@k is then known.
    for r in records:
        if r["benchmark"] in ("aime24", "amc23"):
            assert r["correct"] == (r["sample"] == 0), r
        assert r["truncated"] == (r["sample"] == 1)
        assert r["gold_ok"] and r["pred"]
    for bench in BENCHES:
        mine = [r for r in records if r["benchmark"] == bench]
        scores = results["scores"]["benchmarks"][bench]
        per_problem = {}
        for r in mine:
            per_problem.setdefault(r["id"], []).append(r["correct"])
        for k in (1, 2, 3):
            expected = sum(pass_at_k(3, sum(v), k) for v in per_problem.values()) / len(per_problem)
            assert scores[f"pass@{k}"] == pytest.approx(expected)
        assert scores["mean_tokens"] == pytest.approx(sum(r["num_tokens"] for r in mine) / len(mine))
        assert scores["truncated_frac"] == pytest.approx(1 / 3)
    assert results["scores"]["benchmarks"]["aime24"]["pass@1"] == pytest.approx(1 / 3)
    assert results["scores"]["benchmarks"]["aime24"]["pass@2"] == pytest.approx(2 / 3)
    avg = results["scores"]["average"]["pass@1"]
    assert avg == pytest.approx(sum(results["scores"]["benchmarks"][b]["pass@1"] for b in BENCHES) / len(BENCHES))
    # All samples of a problem travel in one request.
    assert {n for _, n in engine.requests} == {3}
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["scores"]["average"]["pass@1"] == pytest.approx(avg)


def test_resume_generates_only_missing_samples(tiny_model_dir: Path, tmp_path: Path, engine: ScriptedEngine) -> None:
    run_eval(_cfg(tiny_model_dir, tmp_path, samples=1), engine=engine)
    assert sum(p * n for p, n in engine.requests) == len(BENCHES) * LIMIT
    engine.requests.clear()
    run_eval(_cfg(tiny_model_dir, tmp_path, samples=1), engine=engine)
    assert engine.requests == []  # nothing missing, nothing generated
    # More samples: only the new indices 1 and 2 are requested, two per problem.
    results = run_eval(_cfg(tiny_model_dir, tmp_path, samples=3), engine=engine)
    assert {n for _, n in engine.requests} == {2}
    assert sum(p for p, _ in engine.requests) == len(BENCHES) * LIMIT
    keys = list(read_records(tmp_path))
    assert len(keys) == len(set(keys)) == len(BENCHES) * LIMIT * 3
    assert results["run"]["new_completions"] == len(BENCHES) * LIMIT * 2


def test_resume_after_a_torn_line(tiny_model_dir: Path, tmp_path: Path, engine: ScriptedEngine) -> None:
    run_eval(_cfg(tiny_model_dir, tmp_path, samples=1), engine=engine)
    path = tmp_path / COMPLETIONS_FILE
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # killed mid-write
    engine.requests.clear()
    results = run_eval(_cfg(tiny_model_dir, tmp_path, samples=1), engine=engine)
    assert engine.requests == [(1, 1)]
    assert len(read_records(tmp_path)) == len(BENCHES) * LIMIT
    assert results["scores"]["benchmarks"]["aime24"]["problems"] == LIMIT


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"temperature": 1.0}, "temperature"),
        ({"top_p": 0.5}, "top_p"),
        ({"max_new_tokens": 100}, "max_new_tokens"),
        ({"seed": 7}, "seed"),
        ({"dtype": "float32"}, "dtype"),
    ],
)
def test_other_sampling_settings_are_refused(
    tiny_model_dir: Path, tmp_path: Path, engine: ScriptedEngine, change: dict, named: str
) -> None:
    run_eval(_cfg(tiny_model_dir, tmp_path, samples=1), engine=engine)
    engine.requests.clear()
    with pytest.raises(StaleOutputError, match=rf"different {named} .*--output_dir NEW.*--overwrite true"):
        run_eval(replace(_cfg(tiny_model_dir, tmp_path, samples=1), **change), engine=engine)
    assert engine.requests == []  # refused before generating anything


def test_another_model_is_refused_then_overwrite_starts_afresh(
    tiny_model_dir: Path, tmp_path: Path, engine: ScriptedEngine
) -> None:
    out = tmp_path / "out"
    run_eval(_cfg(tiny_model_dir, out, samples=1), engine=engine)
    other = tmp_path / "other_model"
    shutil.copytree(tiny_model_dir, other)
    (other / "config.json").write_text((other / "config.json").read_text().replace("}", ', "note": 1}', 1))
    engine.requests.clear()
    with pytest.raises(StaleOutputError, match="different model"):
        run_eval(replace(_cfg(tiny_model_dir, out, samples=1), model=str(other)), engine=engine)
    assert engine.requests == []
    # The same weights touched again (a re-export) count as another model too: never mixed.
    (tiny_model_dir / "model.safetensors").touch()
    with pytest.raises(StaleOutputError, match="different model"):
        run_eval(_cfg(tiny_model_dir, out, samples=1), engine=engine)
    results = run_eval(replace(_cfg(tiny_model_dir, out, samples=1), model=str(other), overwrite=True), engine=engine)
    assert results["run"]["new_completions"] == results["run"]["new_completions"] + results["run"]["reused_completions"]
    assert json.loads((out / MANIFEST_FILE).read_text())["model"] == str(other)


def test_completions_without_a_manifest_are_refused(
    tiny_model_dir: Path, tmp_path: Path, engine: ScriptedEngine
) -> None:
    run_eval(_cfg(tiny_model_dir, tmp_path, samples=1), engine=engine)
    (tmp_path / MANIFEST_FILE).unlink()  # a folder written before manifests existed
    with pytest.raises(StaleOutputError, match="without a run.json"):
        run_eval(_cfg(tiny_model_dir, tmp_path, samples=1), engine=engine)
    (tmp_path / "notes.txt").write_text("mine")
    results = run_eval(replace(_cfg(tiny_model_dir, tmp_path, samples=1), overwrite=True), engine=engine)
    assert results["run"]["reused_completions"] == 0 and (tmp_path / MANIFEST_FILE).exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only our outputs are deleted


def test_a_manifest_without_completions_is_replaced(
    tiny_model_dir: Path, tmp_path: Path, engine: ScriptedEngine
) -> None:
    """A run that failed before writing any completion leaves only run.json; another run may use the folder."""
    run_eval(_cfg(tiny_model_dir, tmp_path, samples=1), engine=engine)
    (tmp_path / COMPLETIONS_FILE).unlink()
    results = run_eval(replace(_cfg(tiny_model_dir, tmp_path, samples=1), temperature=1.0), engine=engine)
    assert results["run"]["reused_completions"] == 0
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["identity"]["temperature"] == 1.0


def test_stale_folder_through_the_console_script(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The user's view: exit code 2, one line naming the setting and the fix, nothing else on stderr."""
    out = tmp_path / "out"
    base = ["eval", "--model", str(tiny_model_dir), "--engine", "hf", "--benchmarks", "[aime24]", "--limit", "1",
            "--max_new_tokens", "4", "--output_dir", str(out)]  # fmt: skip
    script = Path(sys.executable).parent / "openrs-pl"
    first = subprocess.run([str(script), *base], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "1 new and 0 reused completions" in first.stdout
    second = subprocess.run([str(script), *base, "--temperature", "1.0"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 2
    errors = [line for line in second.stderr.splitlines() if line.startswith("openrs-pl eval: error:")]
    assert len(errors) == 1 and "different temperature (0.6 there, 1.0 now)" in errors[0]
    assert "Traceback" not in second.stderr and "Zero-shot" not in second.stdout
    third = subprocess.run([str(script), *base], capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and "0 new and 1 reused completions" in third.stdout


def test_truncated_policy_changes_scores_not_records(
    tiny_model_dir: Path, tmp_path: Path, engine: ScriptedEngine
) -> None:
    """Sample 1 of each problem is cut at the limit; the scripted engine answers right on sample 0 only, so make
    sample 1 right too and check that ``truncated="wrong"`` alone takes the credit away."""
    engine.right_samples = {0, 1}
    graded = run_eval(_cfg(tiny_model_dir, tmp_path, samples=2), engine=engine)
    strict = run_eval(replace(_cfg(tiny_model_dir, tmp_path, samples=2), truncated="wrong"), engine=engine)
    assert strict["run"]["new_completions"] == 0  # the policy is applied at scoring time: nothing regenerated
    for bench in ("aime24", "amc23"):
        assert graded["scores"]["benchmarks"][bench]["pass@1"] == pytest.approx(1.0)
        assert graded["scores"]["benchmarks"][bench]["truncated_correct_frac"] == pytest.approx(0.5)
        assert strict["scores"]["benchmarks"][bench]["pass@1"] == pytest.approx(0.5)


def test_markdown_has_paper_rows_and_this_run(tiny_model_dir: Path, tmp_path: Path, engine: ScriptedEngine) -> None:
    results = run_eval(_cfg(tiny_model_dir, tmp_path, samples=2), engine=engine)
    text = (tmp_path / "results.md").read_text()
    for _, model, _ in PAPER_TABLE1:
        assert model in text
    assert "| Open-RS3 (50 steps) | 46.7 | 84.4 | 72.5 | 26.8 | 51.3 | 56.3 |" in text
    ours = [results["scores"]["benchmarks"][b]["pass@1"] * 100 for b in ("aime24", "math500", "amc23")]
    # Minerva and OlympiadBench did not run: dashes there, and a dash for the five-benchmark average too.
    assert f"| **{tiny_model_dir}** | {ours[0]:.1f} | {ours[1]:.1f} | {ours[2]:.1f} | – | – | – |" in text
    assert text.splitlines()[text.splitlines().index("## Details") + 2].startswith("| Benchmark | Problems | pass@1 |")


def test_config_validation_messages(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown benchmark.*known: aime24"):
        EvalConfig(model="m", benchmarks=["aime25"])
    with pytest.raises(ValueError, match="top_p"):
        EvalConfig(model="m", top_p=0.0)
    with pytest.raises(ValueError, match="engine must be one of"):
        EvalConfig(model="m", engine="tgi")  # type: ignore[arg-type]


def _parse(argv: list[str]) -> EvalConfig:
    namespace = build_parser().parse_args(argv)
    return EvalConfig(**{f.name: namespace[f.name] for f in fields(EvalConfig)})


def test_cli_round_trip() -> None:
    cfg = EvalConfig(
        model="some/model", benchmarks=["aime24", "minerva"], samples=4, limit=5, top_p=0.9, truncated="wrong"
    )
    assert _parse(config_to_argv(cfg)) == cfg
    defaults = _parse(["--model", "x"])
    assert (defaults.temperature, defaults.top_p, defaults.max_new_tokens) == (0.6, 0.95, 32768)
    assert defaults.truncated == "grade" and defaults.overwrite is False
    assert defaults.benchmarks == list(BENCHMARKS) == ["aime24", "math500", "amc23", "minerva", "olympiadbench"]
    assert _parse(["--model", "x", "--benchmarks", "[aime24, amc23]"]).benchmarks == ["aime24", "amc23"]
    with pytest.raises(ArgumentError, match="engine"):
        build_parser().parse_args(["--model", "x", "--engine", "tgi"])
    with pytest.raises(ArgumentError, match="aime25"):
        build_parser().parse_args(["--model", "x", "--benchmarks", "[aime25]"])


def test_help_documents_every_field_and_lists_the_benchmarks(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in fields(EvalConfig):
        assert f"--{f.name}" in text
    for name in BENCHMARKS:
        assert name in text
    assert "lighteval, hence the paper's numbers" in text  # the field docstrings are the help


def _check_outputs(out: Path, per_bench: int, samples: int) -> dict:
    records = read_records(out)
    assert len(records) == len(BENCHMARKS) * per_bench * samples
    results = json.loads((out / "results.json").read_text())
    for bench in BENCHMARKS:
        assert results["scores"]["benchmarks"][bench]["problems"] == per_bench
    assert "Open-RS1 (100 steps)" in (out / "results.md").read_text()
    for r in records.values():
        assert r.num_tokens <= 24 and r.completion is not None
    return results


@pytest.mark.slow
def test_end_to_end_hf_engine_cli(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main(["--model", str(tiny_model_dir), "--engine", "hf", "--limit", "5", "--max_new_tokens", "24",
          "--output_dir", str(tmp_path), "--samples", "2"])  # fmt: skip
    results = _check_outputs(tmp_path, per_bench=5, samples=2)
    assert results["engine"] == "hf"
    assert "Zero-shot pass@1" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.vllm
def test_end_to_end_vllm_cpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    cfg = EvalConfig(model=str(tiny_model_dir), engine="vllm", limit=5, max_new_tokens=24, output_dir=str(tmp_path))
    results = run_eval(cfg)
    assert results["engine"] == "vllm"
    _check_outputs(tmp_path, per_bench=5, samples=1)


@pytest.mark.slow
def test_data_parallel_workers_merge(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = EvalConfig(
        model=str(tiny_model_dir), engine="hf", benchmarks=["aime24"], limit=4, max_new_tokens=8,
        output_dir=str(tmp_path), data_parallel=2,
    )  # fmt: skip
    results = run_eval(cfg)
    assert not list(tmp_path.glob("completions.shard*.jsonl"))  # merged and removed
    ids = [r.id for r in read_records(tmp_path).values()]
    assert sorted(ids) == sorted(str(r["id"]) for r in load_benchmark("aime24")[:4])
    assert results["scores"]["benchmarks"]["aime24"]["completions"] == 4
