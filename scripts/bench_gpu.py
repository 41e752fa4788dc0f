"""GPU benchmark of the recipe's four costs on DeepSeek-R1-Distill-Qwen-1.5B's exact architecture, random weights.

Measures, on the shapes of one trainer micro-batch and one dedicated vLLM engine:

* ``train_step``: policy forward + backward (the project's chunked ``completion_logprobs`` and ``grpo_loss``) and
  one AdamW step on a micro-batch of ``--micro-batch`` rows x (``--prompt-len`` + ``--completion-len``) tokens;
* ``reference_pass``: the frozen reference's no-grad log-probs for the same micro-batch;
* ``decode``: the engine's ``generate`` of ``--sequences`` sequences x ``--decode-tokens`` tokens (tokens/s), with
  ``--engine vllm`` (a dedicated ``VLLMEngine``, the recipe's) or ``--engine hf`` (``model.generate`` on a separate
  copy of the weights: where vLLM is not installed, a lower bound on what the dedicated device decodes);
* ``weight_sync``: ``VLLMEngine.sync_weights`` from the trained policy (seconds; vLLM only);

plus the peak device memory of the trainer (``torch.cuda.max_memory_allocated``) next to what ``openrs-pl plan``
predicts for the same layout (single rank, no DeepSpeed), and writes everything as JSON. Nothing is downloaded:
the model is built from the public config.json's numbers (``openrs_pl.plan.R1_DISTILL_QWEN_1_5B`` via
``openrs_pl.models.tiny.save_shaped_checkpoint``) with random weights and a tiny local tokenizer.

On a machine with 2 GPUs (trainer on cuda:0, vLLM on cuda:1), the recipe's shapes::

    python scripts/bench_gpu.py --device cuda:0 --vllm-device cuda:1 --out bench_gpu.json

``--tiny`` runs the same code on CPU with the test suite's tiny Qwen2 and small shapes (what CI checks). GPU
figures (one H100, ``--engine hf``) are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from openrs_pl import plan
from openrs_pl.grpo.logprobs import completion_logprobs
from openrs_pl.grpo.loss import grpo_loss
from openrs_pl.models.tiny import save_shaped_checkpoint, save_tiny_checkpoint
from openrs_pl.rollout.engine import GenerationEngine
from openrs_pl.rollout.hf_engine import HFEngine
from openrs_pl.rollout.types import SamplingConfig
from openrs_pl.rollout.vllm_engine import VLLMConfig, VLLMEngine


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


TOKEN_IDS = (5, 2000)  # ordinary ids of the tiny tokenizer, which vLLM checks prompts against


def micro_batch(rows: int, prompt_len: int, completion_len: int, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(*TOKEN_IDS, (rows, prompt_len + completion_len), generator=generator)  # [B, P+L]
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),  # [B, P+L]
        "advantages": torch.randn(rows, generator=generator).to(device),  # [B]
        "mask": torch.ones(rows, completion_len, device=device),  # [B, L]
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny Qwen2 on CPU with small shapes (the CI check)")
    parser.add_argument("--device", default="cuda:0", help="trainer device")
    parser.add_argument("--vllm-device", default="cuda:1", help="vLLM engine device")
    parser.add_argument("--engine", choices=("vllm", "hf"), default="vllm", help="the decoding engine to time")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--attn", default="flash_attention_2", help="attn_implementation of the policy")
    parser.add_argument("--micro-batch", type=int, default=6)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--completion-len", type=int, default=3584)
    parser.add_argument("--chunk", type=int, default=2, help="logprob_chunk_size")
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--sequences", type=int, default=72, help="sequences decoded at once (3 ranks x 4 x 6)")
    parser.add_argument("--decode-tokens", type=int, default=512)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.7)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench_gpu.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.device = args.vllm_device = "cpu"
        args.dtype, args.attn = "float32", "sdpa"
        args.micro_batch, args.prompt_len, args.completion_len, args.chunk = 2, 16, 32, 1
        args.sequences, args.decode_tokens, args.repeats = 4, 16, 1
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    checkpointing = not args.no_gradient_checkpointing

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "m"
        if args.tiny:
            save_tiny_checkpoint(model_dir)
        else:
            save_shaped_checkpoint(model_dir, plan.R1_DISTILL_QWEN_1_5B)
        load = dict(dtype=dtype, attn_implementation=args.attn)
        policy = AutoModelForCausalLM.from_pretrained(model_dir, **load).to(device).train()
        reference = AutoModelForCausalLM.from_pretrained(model_dir, **load).to(device).eval().requires_grad_(False)
        if checkpointing:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6)
        batch = micro_batch(args.micro_batch, args.prompt_len, args.completion_len, device)

        def logprobs(model: torch.nn.Module) -> torch.Tensor:
            return completion_logprobs(
                model, batch["input_ids"], batch["attention_mask"], args.completion_len, 0.7, args.chunk
            )

        with torch.no_grad():
            ref = logprobs(reference)  # [B, L]

        def train_step() -> None:
            out = grpo_loss(logprobs(policy), None, ref, batch["advantages"], batch["mask"], beta=0.04)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)  # keep the gradients allocated, as between micro-batches

        def reference_pass() -> None:
            with torch.no_grad():
                logprobs(reference)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        train_times = timed(train_step, device, args.repeats)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        reference_times = timed(reference_pass, device, args.repeats)

        engine: GenerationEngine
        if args.engine == "vllm":
            engine = VLLMEngine(
                str(model_dir),
                VLLMConfig(
                    device=args.vllm_device,
                    dtype=args.dtype,
                    max_model_len=args.prompt_len + args.decode_tokens + 16,
                    gpu_memory_utilization=args.gpu_memory_utilization,
                    kv_cache_memory_bytes=1 << 27 if args.vllm_device == "cpu" else None,
                ),
            )
        else:  # a separate copy of the weights on the engine's device, as a dedicated engine holds
            decoder = AutoModelForCausalLM.from_pretrained(model_dir, **load).to(args.vllm_device).eval()
            engine = HFEngine(decoder)
        n = min(6, args.sequences)
        prompts = torch.randint(*TOKEN_IDS, (args.sequences // n, args.prompt_len)).tolist()
        # min_tokens would be cleaner, but random weights may emit EOS: count what was really generated.
        sampling = SamplingConfig(n=n, temperature=0.7, max_tokens=args.decode_tokens, seed=0)
        generated: list[int] = []
        decode_times = timed(
            lambda: generated.append(sum(map(len, engine.generate(prompts, sampling).completion_ids))),
            torch.device(args.vllm_device),
            args.repeats,
        )
        sync_times = []
        if isinstance(engine, VLLMEngine):
            for _ in range(args.repeats):
                synchronize(device)
                engine.sync_weights(policy, force=True)
                sync_times.append(engine.last_sync_seconds)
        engine.close()

    shape = plan.ModelShape.from_hf_config(policy.config)
    layout = plan.TrainLayout(
        ranks=1,
        zero_stage=None,
        weight_bytes=dtype.itemsize,
        activation_bytes=dtype.itemsize,
        micro_batch_size=args.micro_batch,
        prompt_length=args.prompt_len,
        completion_length=args.completion_len,
        logprob_chunk_size=args.chunk,
        reference=True,
        gradient_checkpointing=checkpointing,
    )
    tokens = args.micro_batch * (args.prompt_len + args.completion_len)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "engine": args.engine,
        "engine_device": args.vllm_device,
        "shape": "tiny" if args.tiny else "r1-distill-qwen-1.5b",
        "num_params": shape.num_params(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "train_step_s": min(train_times),
        "train_tokens_per_s": tokens / min(train_times),
        "reference_pass_s": min(reference_times),
        "decode_tokens_per_s": generated[-1] / min(decode_times),
        "decode_s": min(decode_times),
        "generated_tokens": generated[-1],
        "weight_sync_s": min(sync_times) if sync_times else None,
        "trainer_peak_memory_bytes": peak,
        "planned_trainer_peak_bytes": plan.trainer_memory(shape, layout)["peak"],
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
