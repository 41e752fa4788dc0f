"""Projected step and wall time of the recipe on the paper's 4 x A40, synchronous vs overlapped rollouts.

No A40 was available to measure on, so this is arithmetic over measured figures and published hardware numbers,
with every input a flag (and in the JSON it writes):

* **training**, compute-bound: the trainer micro-batch (6 rows x (512 + L) tokens, forward + backward + AdamW)
  and the reference pass measured by ``scripts/bench_gpu.py`` on one H100 at L = 1536 and 3584, interpolated
  linearly in L and scaled by the ratio of dense bf16 tensor throughput (H100 SXM 989 TFLOPS, A40 149.7 TFLOPS;
  NVIDIA's datasheets). Each of the 3 trainer ranks runs ``grad_accum`` micro-batches per optimizer step.
* **generation**, bandwidth-bound: a decode step of the dedicated vLLM device reads the weights once and every
  live sequence's keys and values (``openrs_pl.plan`` gives the bytes of both for R1-Distill-Qwen-1.5B), at a
  fraction ``--decode-efficiency`` of the A40's 696 GB/s. The batch's longest completion sets the number of
  decode steps; shorter completions stop reading KV when they end.
* **sync**: the policy's bf16 weights copied to the vLLM device over PCIe, plus vLLM's reload overhead.

A synchronous step takes gen + train + sync; an overlapped one (generation of step t+1 during step t's training)
max(gen, train) + sync. The paper reports 500 steps "within 24 hours" on this node (Dang & Ngo 2025,
arXiv:2503.16219).

    python scripts/project_gpu_step.py --out runs/gpu_projection.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from openrs_pl import plan

H100_BF16_TFLOPS = 989.0
A40_BF16_TFLOPS = 149.7
A40_BANDWIDTH_GBS = 696.0
PAPER_HOURS = 24.0


@dataclass(frozen=True)
class MeasuredTrain:
    """Seconds per micro-batch of 6 rows measured on one H100 (docs/benchmarks.md), at two completion lengths."""

    short_len: int = 1536
    short_train_s: float = 0.721
    short_ref_s: float = 0.139
    long_len: int = 3584
    long_train_s: float = 0.976
    long_ref_s: float = 0.252

    def seconds(self, completion_len: int) -> float:
        """Train step + reference pass of one micro-batch at ``completion_len``, linear between the two points.

        >>> MeasuredTrain().seconds(3584)
        1.228
        """
        frac = (completion_len - self.short_len) / (self.long_len - self.short_len)
        short = self.short_train_s + self.short_ref_s
        long = self.long_train_s + self.long_ref_s
        return short + frac * (long - short)


def decode_seconds(
    shape: plan.ModelShape,
    completion_lens: list[int],
    prompt_len: int,
    bandwidth_gbs: float,
    efficiency: float,
) -> float:
    """Bandwidth-bound decode time of one batch generated together.

    decode step t (1 <= t <= max len) reads the weights ``P x 2`` bytes and, for every sequence still running,
    its ``prompt_len + t`` cached tokens of ``kv`` bytes each, so

        bytes = T x 2P + kv x sum_s (prompt_len x len_s + len_s (len_s + 1) / 2),   T = max_s len_s
        seconds = bytes / (bandwidth x efficiency)

    A one-layer model of 224 parameters (448 weight bytes, 16 KV bytes per token), completions of 2 and 1
    tokens after 3-token prompts, at 1 byte/s: 2 steps x 448 + 16 x ((3x2 + 3) + (3x1 + 1)) = 896 + 208

    >>> s = plan.ModelShape(10, 4, 8, 1, 1, 1, 4, True)
    >>> s.num_params(), kv_bytes_per_token(s)
    (224, 16)
    >>> decode_seconds(s, [2, 1], prompt_len=3, bandwidth_gbs=1e-9, efficiency=1.0)
    1104.0
    """
    weight_bytes = 2 * shape.num_params()
    kv = kv_bytes_per_token(shape)
    steps = max(completion_lens)
    kv_reads = sum(prompt_len * n + n * (n + 1) // 2 for n in completion_lens) * kv
    return (steps * weight_bytes + kv_reads) / (bandwidth_gbs * 1e9 * efficiency)


def kv_bytes_per_token(shape: plan.ModelShape, dtype_bytes: int = 2) -> int:
    """Keys and values of one token over all layers: ``layers x 2 x kv_heads x head_dim x dtype bytes``.

    >>> kv_bytes_per_token(plan.R1_DISTILL_QWEN_1_5B)
    28672
    """
    return shape.num_layers * 2 * shape.kv_dim * dtype_bytes


def length_profile(name: str, sequences: int, limit: int) -> list[int]:
    """Completion lengths of one step's batch: ``limit`` (every completion truncated, the long-run failure mode)
    or ``spread`` (evenly from limit/8 to the limit, mean ~0.56 x limit; the longest still hits it)."""
    if name == "limit":
        return [limit] * sequences
    if name == "spread":
        return [round(limit / 8 + (limit - limit / 8) * i / (sequences - 1)) for i in range(sequences)]
    raise ValueError(f"unknown length profile {name!r}: use 'limit' or 'spread'")


def project(args: argparse.Namespace) -> dict[str, Any]:
    shape = plan.R1_DISTILL_QWEN_1_5B
    measured = MeasuredTrain()
    compute_ratio = H100_BF16_TFLOPS / A40_BF16_TFLOPS
    sequences = args.trainer_ranks * args.grad_accum * args.micro_batch
    sync_s = 2 * shape.num_params() / (args.pcie_gbs * 1e9) + args.reload_overhead_s
    profiles = {}
    for name in ("limit", "spread"):
        lens = length_profile(name, sequences, args.max_completion_length)
        mean_len = sum(lens) / len(lens)
        # a padded micro-batch costs its longest row: the expected max of k rows drawn uniformly from the
        # profile's range is lo + (hi - lo) k / (k + 1); a packed one costs its mean length
        k = args.micro_batch
        padded_len = round(min(lens) + (max(lens) - min(lens)) * k / (k + 1))
        train_s = args.grad_accum * measured.seconds(padded_len) * compute_ratio
        packed_train_s = args.grad_accum * measured.seconds(round(mean_len)) * compute_ratio
        gen_s = decode_seconds(shape, lens, args.prompt_len, A40_BANDWIDTH_GBS, args.decode_efficiency)
        sync_step = gen_s + train_s + sync_s
        overlapped = max(gen_s, train_s) + sync_s
        profiles[name] = {
            "mean_completion_len": mean_len,
            "expected_padded_len": padded_len,
            "generation_s": gen_s,
            "training_s": train_s,
            "packed_training_s": packed_train_s,
            "packed_overlapped_step_s": max(gen_s, packed_train_s) + sync_s,
            "sync_s": sync_s,
            "sync_step_s": sync_step,
            "overlapped_step_s": overlapped,
            "sync_run_h": sync_step * args.max_steps / 3600,
            "overlapped_run_h": overlapped * args.max_steps / 3600,
            "overlap_speedup": sync_step / overlapped,
        }
    return {
        "inputs": vars(args) | {"out": str(args.out)},
        "measured_h100": asdict(measured),
        "h100_to_a40_compute_ratio": compute_ratio,
        "a40_bandwidth_gbs": A40_BANDWIDTH_GBS,
        "kv_bytes_per_token": kv_bytes_per_token(shape),
        "weight_bytes": 2 * shape.num_params(),
        "sequences_per_step": sequences,
        "paper_hours": PAPER_HOURS,
        "profiles": profiles,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trainer-ranks", type=int, default=3)
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--micro-batch", type=int, default=6)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--max-completion-length", type=int, default=3584)
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--decode-efficiency", type=float, default=0.5, help="fraction of peak bandwidth reached")
    parser.add_argument("--pcie-gbs", type=float, default=20.0, help="host-side copy bandwidth for the weight sync")
    parser.add_argument("--reload-overhead-s", type=float, default=1.0, help="vLLM's reload beyond the copy")
    parser.add_argument("--out", type=Path, default=Path("gpu_projection.json"))
    args = parser.parse_args(argv)
    result = project(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    steps = args.max_steps
    print(f"| lengths | mean | generate | train | sync | step: sync | overlapped | {steps} steps: sync | overlapped |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, p in result["profiles"].items():
        print(
            f"| {name} | {p['mean_completion_len']:.0f} | {p['generation_s']:.1f} s | {p['training_s']:.1f} s | "
            f"{p['sync_s']:.1f} s | {p['sync_step_s']:.1f} s | {p['overlapped_step_s']:.1f} s | "
            f"{p['sync_run_h']:.1f} h | {p['overlapped_run_h']:.1f} h |"
        )
    return result


if __name__ == "__main__":
    main()
