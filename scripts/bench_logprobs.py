"""Log-prob pass benchmark: padded vs packed vs packed + shared prompts, forward + backward time and peak memory.

One generation batch of ``--prompts`` prompts x ``--group`` completions with a realistic spread of completion
lengths (log-normal around ``--mean-completion-frac`` of ``--max-completion-len``, clipped at the limit, so some
completions are truncated as in training) is scored three ways, each in its own process so peak memory is its own:

* ``padded``: :func:`~openrs_pl.grpo.logprobs.completion_logprobs`, ``--chunk`` rows per forward (the default pass);
* ``packed``: :func:`~openrs_pl.grpo.packing.pack_rows` + :func:`~openrs_pl.grpo.logprobs.packed_completion_logprobs`
  (``grpo.packing``), rows of at most ``--pack-tokens`` tokens;
* ``shared``: the same with each prompt computed once per group (``grpo.share_prompts``).

Per mode: the median wall and process-CPU seconds of a training pass (forward + backward of the summed
log-probs) and of a no-grad pass (reference / old policy), the tokens the model computed, and the peak memory of
the passes (CUDA: max allocated; CPU: the process's peak RSS above its RSS once model and batch exist, so gradient
buffers count in every mode). The log-probs of every mode are checked against the padded ones. Writes JSON; the
model is a random-weight Qwen2 of the ``--model`` shape (B = the 24M model of ``scripts/bench_vs_trl.py``).
``--tiny`` runs small shapes in seconds (what the test checks)::

    python scripts/bench_logprobs.py --model B --out bench_logprobs.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from openrs_pl.grpo.logprobs import completion_logprobs, packed_completion_logprobs
from openrs_pl.grpo.packing import pack_rows

MODELS = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128),
    "A": dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=1024),
    "B": dict(hidden_size=512, num_layers=6, num_heads=8, num_kv_heads=2, intermediate_size=2048),
}
MODES = ("padded", "packed", "shared")
VOCAB = 2048  # the tiny tokenizer's size
PAD = 0


def build_model(name: str, device: torch.device) -> Qwen2ForCausalLM:
    shape = MODELS[name]
    config = Qwen2Config(  # type: ignore[call-arg]
        vocab_size=VOCAB,
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"],
        num_key_value_heads=shape["num_kv_heads"],
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        pad_token_id=PAD,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).to(device).train()


def lengths(args: argparse.Namespace) -> tuple[list[int], list[int]]:
    """Prompt lengths (one per prompt) and completion lengths (prompts x group), reproducibly random."""
    g = torch.Generator().manual_seed(args.seed)
    low, high = args.prompt_len
    prompts = torch.randint(low, high + 1, (args.prompts,), generator=g).tolist()
    mean = args.mean_completion_frac * args.max_completion_len
    # log-normal with sigma 0.6: a long right tail that the limit clips (the truncated completions of training)
    raw = torch.exp(torch.randn(args.prompts * args.group, generator=g) * 0.6) * mean / 1.2  # E[exp(0.6 z)] = 1.2
    completions = raw.round().clamp(1, args.max_completion_len).long().tolist()
    return prompts, completions


def batch(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Left-padded prompts and right-padded completions, the G completions of a prompt in consecutive rows."""
    prompt_lens, completion_lens = lengths(args)
    g = torch.Generator().manual_seed(args.seed + 1)
    p_max, l_max = max(prompt_lens), max(completion_lens)
    rows: dict[str, list[list[int]]] = {
        "prompt_ids": [],
        "prompt_mask": [],
        "completion_ids": [],
        "completion_mask": [],
    }
    for i, c_len in enumerate(completion_lens):
        p_len = prompt_lens[i // args.group]
        prompt = torch.randint(1, VOCAB, (p_len,), generator=torch.Generator().manual_seed(i // args.group)).tolist()
        completion = torch.randint(1, VOCAB, (c_len,), generator=g).tolist()
        rows["prompt_ids"].append([PAD] * (p_max - p_len) + prompt)
        rows["prompt_mask"].append([0] * (p_max - p_len) + [1] * p_len)
        rows["completion_ids"].append(completion + [PAD] * (l_max - c_len))
        rows["completion_mask"].append([1] * c_len + [0] * (l_max - c_len))
    return tuple(torch.tensor(rows[k], device=device) for k in rows)


def scorer(mode: str, model: Qwen2ForCausalLM, tensors: tuple[torch.Tensor, ...], args: argparse.Namespace) -> Any:
    """A function returning the ``[N, L]`` log-probs of the batch in ``mode``, and the tokens one call computes."""
    prompt_ids, prompt_mask, completion_ids, completion_mask = tensors
    if mode == "padded":
        ids = torch.cat([prompt_ids, completion_ids], 1)
        mask = torch.cat([prompt_mask, completion_mask], 1)
        return (
            lambda: completion_logprobs(model, ids, mask, completion_ids.size(1), args.temperature, args.chunk),
            ids.numel(),
        )
    packed = pack_rows(*tensors, pack_tokens=args.pack_tokens, share_prompts=mode == "shared")
    return lambda: packed_completion_logprobs(model, packed, args.temperature), packed.num_tokens


def peak_memory(device: torch.device, rss_after_setup: int) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_after_setup)


def timed(fn: Any, device: torch.device, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median process CPU seconds of ``repeats`` calls after one warm-up.

    With one thread on a shared machine the CPU time is the steadier figure: other processes stretch the wall time
    of a call, not the CPU time it consumes.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One mode in this process: times, tokens, peak memory, and the log-probs."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build_model(args.model, device)
    tensors = batch(args, device)
    score, tokens = scorer(mode, model, tensors, args)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_after_setup = psutil.Process().memory_info().rss

    def train_pass() -> None:
        score().sum().backward()
        model.zero_grad(set_to_none=True)

    with torch.no_grad():
        logprobs = score()
        no_grad_s, no_grad_cpu_s = timed(score, device, args.repeats)
    train_s, train_cpu_s = timed(train_pass, device, args.repeats)
    return {"train_s": train_s, "train_cpu_s": train_cpu_s, "no_grad_s": no_grad_s, "no_grad_cpu_s": no_grad_cpu_s,
            "tokens": tokens, "peak_memory_bytes": peak_memory(device, rss_after_setup),
            "logprobs": logprobs.cpu().tolist()}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="B")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group", type=int, default=4, help="completions per prompt (G)")
    parser.add_argument("--prompt-len", type=int, nargs=2, default=(60, 160), metavar=("MIN", "MAX"))
    parser.add_argument("--max-completion-len", type=int, default=512)
    parser.add_argument("--mean-completion-frac", type=float, default=0.35)
    parser.add_argument("--chunk", type=int, default=2, help="padded: rows per forward (grpo.logprob_chunk_size)")
    parser.add_argument("--pack-tokens", type=int, default=1024, help="packed: tokens per row (grpo.pack_tokens)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="small shapes for a quick check")
    parser.add_argument("--out", type=Path, default=Path("bench_logprobs.json"))
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tiny:
        args.model, args.prompts, args.group, args.prompt_len = "tiny", 2, 3, (8, 16)
        args.max_completion_len, args.pack_tokens, args.repeats = 48, 128, 1
    if args.worker:  # a child process: one mode, result on stdout
        print(json.dumps(run_mode(args.worker, args)))
        return {}
    results = {mode: _in_subprocess(mode, sys.argv[1:] if argv is None else argv) for mode in MODES}
    reference = torch.tensor(results["padded"].pop("logprobs"))
    valid = batch(args, torch.device("cpu"))[3].bool()
    for mode in ("packed", "shared"):
        got = torch.tensor(results[mode].pop("logprobs"))
        results[mode]["max_abs_logprob_diff"] = float((got - reference)[valid].abs().max())
        for key in ("train_s", "train_cpu_s", "no_grad_s", "no_grad_cpu_s"):
            results[mode][f"{key.removesuffix('_s')}_speedup"] = results["padded"][key] / results[mode][key]
        padded_memory = results["padded"]["peak_memory_bytes"]
        results[mode]["memory_ratio"] = results[mode]["peak_memory_bytes"] / padded_memory if padded_memory else None
    prompt_lens, completion_lens = lengths(args)
    report = {
        "model": args.model,
        "device": args.device,
        "threads": args.threads,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "prompts": args.prompts,
        "group": args.group,
        "prompt_lengths": prompt_lens,
        "completion_lengths": completion_lens,
        "padded_completion_len": max(completion_lens),
        "real_tokens": args.group * sum(prompt_lens) + sum(completion_lens),
        "chunk": args.chunk,
        "pack_tokens": args.pack_tokens,
        "modes": results,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(results, indent=2))
    return report


def _in_subprocess(mode: str, argv: list[str]) -> dict[str, Any]:
    """Run one mode in a fresh process, so its peak memory is its own."""
    proc = subprocess.run([sys.executable, __file__, *argv, "--worker", mode], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
