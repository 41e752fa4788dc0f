"""Rollout throughput: vLLM vs HF ``generate`` on the same model and prompts, and seconds per vLLM weight sync.

Both engines get the same prompts, ``n``, ``max_tokens`` and temperature; one warm-up call each is excluded, then
``--repeats`` timed calls. Tokens/s counts the completion tokens actually produced (a random model rarely stops
early, so both run close to ``max_tokens``). The sync time is that of ``VLLMEngine.sync_weights`` from an HF
policy on ``--device`` after perturbing it (so the weights really change).

Shapes: ``tiny`` (the test suite's Qwen2, hidden 128) or ``r1-1.5b`` (DeepSeek-R1-Distill-Qwen-1.5B's architecture
with random weights; nothing is downloaded; needs a GPU). Examples::

    python scripts/bench_rollout.py --out bench_cpu.json
    python scripts/bench_rollout.py --shape r1-1.5b --device cuda:0 --vllm-device cuda:1 --dtype bfloat16 \\
        --num-prompts 32 --n 6 --max-tokens 1024 --out bench_h100.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from openrs_pl import plan
from openrs_pl.models.tiny import save_shaped_checkpoint, save_tiny_checkpoint
from openrs_pl.rollout.engine import GenerationEngine
from openrs_pl.rollout.hf_engine import HFEngine
from openrs_pl.rollout.types import SamplingConfig
from openrs_pl.rollout.vllm_config import VLLMConfig
from openrs_pl.rollout.vllm_engine import VLLMEngine


def write_checkpoint(shape: str, out_dir: Path) -> Path:
    """An HF folder for ``shape``: the tiny test model, or the R1-1.5B architecture with random weights."""
    if shape == "tiny":
        return save_tiny_checkpoint(out_dir)
    return save_shaped_checkpoint(out_dir, plan.R1_DISTILL_QWEN_1_5B)


def make_prompts(num_prompts: int, prompt_len: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """Random prompts of ordinary tokens (ids past the 5 special ones of the tiny tokenizer)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(5, vocab, (num_prompts, prompt_len), generator=generator).tolist()


def time_generation(engine: GenerationEngine, prompts: list[list[int]], sampling: SamplingConfig, repeats: int) -> dict:
    engine.generate(prompts, sampling)  # warm-up: kernel selection, allocator growth
    tokens, seconds = 0, 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        out = engine.generate(prompts, sampling)
        seconds += time.perf_counter() - start
        tokens += sum(len(ids) for ids in out.completion_ids)
    completions = repeats * len(prompts) * sampling.n
    return {"tokens_per_s": tokens / seconds, "mean_completion_len": tokens / completions, "seconds": seconds}


def time_sync(engine: VLLMEngine, policy: PreTrainedModel, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        with torch.no_grad():
            for param in policy.parameters():
                param.mul_(1.0 + 1e-3)
        if policy.device.type == "cuda":
            torch.cuda.synchronize(policy.device)
        engine.sync_weights(policy, force=True)
        times.append(engine.last_sync_seconds)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=["tiny", "r1-1.5b"], default="tiny")
    parser.add_argument("--device", default="cpu", help="device of the HF policy / HF engine")
    parser.add_argument("--vllm-device", default=None, help="device of the vLLM engine (default: --device)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--num-prompts", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sync-repeats", type=int, default=3)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    parser.add_argument("--kv-cache-bytes", type=int, default=None, help="explicit vLLM KV cache size (CPU)")
    parser.add_argument(
        "--cpu-threads",
        type=int,
        default=1,
        help="CPU threads for both engines (HF: torch threads; vLLM: cores 0..k-1). On a loaded shared machine more "
        "than one thread makes OpenMP stall on descheduled workers, which punishes whichever engine runs then.",
    )
    parser.add_argument("--out", type=Path, default=Path("bench_rollout.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.cpu_threads)
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{args.cpu_threads - 1}")

    sampling = SamplingConfig(n=args.n, temperature=args.temperature, max_tokens=args.max_tokens, seed=0)
    vllm_device = args.vllm_device or args.device
    kv_bytes = args.kv_cache_bytes if args.kv_cache_bytes or vllm_device != "cpu" else 1 << 28
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_checkpoint(args.shape, Path(tmp) / "model")
        prompts = make_prompts(args.num_prompts, args.prompt_len, len(AutoTokenizer.from_pretrained(model_dir)))
        dtype = getattr(torch, args.dtype)
        policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(args.device).eval()
        hf = time_generation(HFEngine(policy), prompts, sampling, args.repeats)
        config = VLLMConfig(
            device=vllm_device,
            dtype=args.dtype,
            max_model_len=args.prompt_len + args.max_tokens + 16,
            gpu_memory_utilization=args.gpu_memory_utilization,
            kv_cache_memory_bytes=kv_bytes,
        )
        start = time.perf_counter()
        engine = VLLMEngine(str(model_dir), config)
        startup = time.perf_counter() - start
        vllm = time_generation(engine, prompts, sampling, args.repeats)
        sync_times = time_sync(engine, policy, args.sync_repeats)
        engine.close()

    on_gpu = vllm_device.startswith("cuda")
    device_name = torch.cuda.get_device_name(torch.device(vllm_device)) if on_gpu else platform.processor()
    result = {
        "shape": args.shape,
        "params": sum(p.numel() for p in policy.parameters()),
        "device": device_name or platform.machine(),
        "cpu_threads": args.cpu_threads,
        "dtype": args.dtype,
        "num_prompts": args.num_prompts,
        "prompt_len": args.prompt_len,
        "n": args.n,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "repeats": args.repeats,
        "hf_generate": hf,
        "vllm": vllm,
        "vllm_speedup": vllm["tokens_per_s"] / hf["tokens_per_s"],
        "vllm_startup_s": startup,
        "sync_seconds": sync_times,
        "sync_seconds_median": sorted(sync_times)[len(sync_times) // 2],
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
