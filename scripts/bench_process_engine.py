"""The generator process: start-up, decode speed beside the in-process HF engine, and what a weight push costs.

Figures (JSON):

* ``pushed_bytes``: what one push moves (each distinct state-dict tensor once);
* ``start_s``: ``ProcessEngine(...)`` until the worker has its model and the initial weights;
* ``in_process`` / ``process``: completion tokens/s of the same seeded requests, HF ``generate`` in this process vs
  in the generator process (one warm-up call each excluded);
* ``push_trainer_s``: how long ``sync_weights`` holds the trainer (the copy into the staging buffer and posting
  the broadcast); ``push_applied_s``: from ``sync_weights`` until a one-token request submitted right after it
  returns, minus the same request without a push (transfer + the worker's copy into its model);
* ``push_during_generation_s``: ``sync_weights`` while the worker decodes a long request (it must not wait for it).

Shapes: ``tiny`` (the test model) or ``r1-1.5b`` (R1-Distill-Qwen-1.5B's architecture, random weights). Examples::

    python scripts/bench_process_engine.py --out bench_process_cpu.json
    python scripts/bench_process_engine.py --shape r1-1.5b --device cuda:0 --engine-device cuda:0 \\
        --dtype bfloat16 --num-prompts 16 --n 6 --max-tokens 256 --out bench_process_gpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from openrs_pl import plan
from openrs_pl.models.tiny import save_shaped_checkpoint, save_tiny_checkpoint
from openrs_pl.rollout.engine import GenerationEngine
from openrs_pl.rollout.hf_engine import HFEngine
from openrs_pl.rollout.process_engine import ProcessEngine, ProcessEngineConfig, weight_layout
from openrs_pl.rollout.types import SamplingConfig


def tokens_per_s(engine: GenerationEngine, prompts: list[list[int]], sampling: SamplingConfig, repeats: int) -> float:
    engine.generate(prompts, sampling)  # warm-up
    tokens, seconds = 0, 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        out = engine.generate(prompts, sampling)
        seconds += time.perf_counter() - start
        tokens += sum(len(ids) for ids in out.completion_ids)
    return tokens / seconds


@torch.no_grad()
def nudge(policy: torch.nn.Module) -> None:
    """Change every weight a little, so each push carries new values."""
    for param in policy.parameters():
        param.mul_(1.0 + 1e-3)
    if next(policy.parameters()).device.type == "cuda":
        torch.cuda.synchronize()


def push_costs(engine: ProcessEngine, policy: torch.nn.Module, probe: list[list[int]], repeats: int) -> dict:
    one_token = SamplingConfig(n=1, temperature=0.0, max_tokens=1)
    engine.generate(probe, one_token)
    trainer, applied, baseline = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.generate(probe, one_token)
        baseline.append(time.perf_counter() - start)
        nudge(policy)
        start = time.perf_counter()
        engine.sync_weights(policy, force=True)
        trainer.append(time.perf_counter() - start)
        engine.generate(probe, one_token)
        applied.append(time.perf_counter() - start)
    base = statistics.median(baseline)
    return {
        "push_trainer_s": statistics.median(trainer),
        "push_applied_s": statistics.median(applied) - base,
        "one_token_request_s": base,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=["tiny", "r1-1.5b"], default="tiny")
    parser.add_argument("--device", default="cpu", help="the trainer's policy device")
    parser.add_argument("--engine-device", default=None, help="the generator's device (default: --device)")
    parser.add_argument("--backend", choices=["auto", "gloo", "nccl"], default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--num-prompts", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--push-repeats", type=int, default=3)
    parser.add_argument("--cpu-threads", type=int, default=1, help="torch threads on both sides")
    parser.add_argument("--out", type=Path, default=Path("bench_process_engine.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.cpu_threads)
    sampling = SamplingConfig(n=args.n, temperature=0.7, max_tokens=args.max_tokens, seed=0)

    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp) / "model"
        model_dir = (
            save_tiny_checkpoint(out_dir)
            if args.shape == "tiny"
            else save_shaped_checkpoint(out_dir, plan.R1_DISTILL_QWEN_1_5B)
        )
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, args.dtype)).to(args.device)
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(5, len(tokenizer), (args.num_prompts, args.prompt_len), generator=generator).tolist()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    in_process = tokens_per_s(HFEngine(policy, eos, pad), prompts, sampling, args.repeats)
    config = ProcessEngineConfig(device=args.engine_device, backend=args.backend, num_threads=args.cpu_threads)
    start = time.perf_counter()
    engine = ProcessEngine(policy, eos, pad, config)
    start_s = time.perf_counter() - start
    try:
        process = tokens_per_s(engine, prompts, sampling, args.repeats)
        pushes = push_costs(engine, policy, prompts[:1], args.push_repeats)
        ticket = engine.submit(prompts, sampling)
        nudge(policy)
        start = time.perf_counter()
        engine.sync_weights(policy, force=True)
        during = time.perf_counter() - start
        engine.collect(ticket)
    finally:
        engine.close()

    result = {
        "shape": args.shape,
        "params": sum(p.numel() for p in policy.parameters()),
        "pushed_bytes": sum(slot.numel * slot.dtype.itemsize for slot in weight_layout(policy.state_dict())),
        "device": args.device,
        "engine_device": str(engine.device),
        "backend": engine.backend,
        "dtype": args.dtype,
        "cpu_threads": args.cpu_threads,
        "num_prompts": args.num_prompts,
        "prompt_len": args.prompt_len,
        "n": args.n,
        "max_tokens": args.max_tokens,
        "start_s": start_s,
        "in_process_tokens_per_s": in_process,
        "process_tokens_per_s": process,
        **pushes,
        "push_during_generation_s": during,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
