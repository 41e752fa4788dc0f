"""``openrs-pl plan``: per-device memory of a recipe config, before any GPU is rented.

openrs-pl plan --config configs/openrs_exp3.yaml
openrs-pl plan --config configs/openrs_exp3.yaml --trainer.devices 2 --gpu-memory 40 --json

Every figure is a formula over the model's shape (its ``config.json``) and the config's batch layout; the
activation and log-prob terms count what autograd keeps for a Hugging Face Qwen2 forward, which
``tests/test_plan.py`` checks against the measured live tensor bytes of real training steps on CPU.

Trainer rank (per device):

* weights ``P x w`` (``w`` = bytes of the training dtype); under DeepSpeed with 16-bit weights also fp32 master
  weights ``4P`` and Adam's two fp32 moments ``8P``, sharded over the ranks from ZeRO stage 1, gradients
  ``P x w`` sharded from stage 2, weights from stage 3 (the ZeRO paper's 2 + 2 + 12 bytes per parameter,
  Rajbhandari et al. 2020, arXiv 1910.02054); without DeepSpeed, torch's AdamW keeps two moments in the
  weights' dtype; its fused step (``optim.fused``, the default) allocates nothing more, its per-parameter and
  foreach steps about two of the largest tensor;
* the frozen reference model ``P x w`` when ``beta > 0``;
* activations kept for backward, for ``micro_batch_size x (prompt + completion)`` tokens: per token and decoder
  layer two RMSNorms ``2 x H x (4 + 2a)`` (the norm upcasts to fp32), ``a x (2H + 2 KV + 4I)`` for attention
  (flash/SDPA: no ``seq^2`` term) and the SwiGLU MLP, and the attention's fp32 log-sum-exp; with gradient
  checkpointing only each layer's input ``a x H`` plus one recomputed layer at a time;
* log-prob buffers: the ``[rows, completion + 1, vocab]`` logits of a micro-batch stay alive for backward, and
  backward adds two logit-sized buffers per ``logprob_chunk_size`` rows; the no-grad reference pass holds two
  chunks' logits, or one plus up to two fp32 ``[completion, vocab]`` rows;
* when a micro-batch takes several log-prob chunks (several forwards), autograd holds one more full gradient
  while it sums each parameter's gradient over the chunks (measured: it dominates checkpointed backward).

vLLM device (dedicated mode): weights plus the KV cache ``layers x 2 x kv_heads x head_dim x dtype bytes`` per
token for ``G x (prompt + completion)`` tokens per prompt, for every prompt of a step in flight at once.
Not modelled: the CUDA context, NCCL and allocator fragmentation (a fixed reserve below), DeepSpeed's
communication buckets beyond one reduce bucket, and vLLM's profiling workspace.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import asdict, dataclass
from typing import Any

GIB = 1 << 30
CARDS_GIB = (24, 48, 80)
RUNTIME_RESERVE_GIB = 2.0
"""Held back on every device for the CUDA context, NCCL buffers and allocator fragmentation (rule of thumb)."""
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a Qwen2-style decoder that memory depends on."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool
    dtype: str = "bfloat16"

    @classmethod
    def from_hf_config(cls, config: Any) -> ModelShape:
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
        return cls(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_layers=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            num_kv_heads=config.num_key_value_heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
            tie_word_embeddings=config.tie_word_embeddings,
            dtype=str(dtype).removeprefix("torch."),
        )

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def num_params(self) -> int:
        """Parameters of a Qwen2 causal LM (q/k/v with bias, RMSNorm weights, optional untied head).

        >>> R1_DISTILL_QWEN_1_5B.num_params()
        1777088000
        """
        h, kv, i = self.hidden_size, self.kv_dim, self.intermediate_size
        attention = (h * h + h) + 2 * (h * kv + kv) + self.num_heads * self.head_dim * h
        layer = attention + 3 * h * i + 2 * h
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * layer + h + embeddings

    def largest_tensor(self) -> int:
        return max(self.vocab_size * self.hidden_size, self.hidden_size * self.intermediate_size)


# DeepSeek-R1-Distill-Qwen-1.5B's config.json, for planning without the hub:
# https://huggingface.co/deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B/blob/main/config.json
R1_DISTILL_QWEN_1_5B = ModelShape(
    vocab_size=151936,
    hidden_size=1536,
    intermediate_size=8960,
    num_layers=28,
    num_heads=12,
    num_kv_heads=2,
    head_dim=128,
    tie_word_embeddings=False,
    dtype="bfloat16",
)
KNOWN_SHAPES = {"deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": R1_DISTILL_QWEN_1_5B}


def load_shape(model: str) -> ModelShape:
    """The shape from the model's ``config.json`` (local folder or hub cache), else the table above."""
    from transformers import AutoConfig

    try:
        return ModelShape.from_hf_config(AutoConfig.from_pretrained(model))
    except (OSError, ValueError) as error:
        if model in KNOWN_SHAPES:
            return KNOWN_SHAPES[model]
        raise ValueError(f"cannot read config.json of {model!r} and it is not in {sorted(KNOWN_SHAPES)}") from error


@dataclass(frozen=True)
class TrainLayout:
    """What a trainer rank holds and processes."""

    ranks: int
    zero_stage: int | None
    """DeepSpeed ZeRO stage, or None for DDP / a single device (torch AdamW)."""
    weight_bytes: int
    activation_bytes: int
    micro_batch_size: int
    prompt_length: int
    completion_length: int
    logprob_chunk_size: int
    reference: bool
    gradient_checkpointing: bool
    fused_optimizer: bool = True
    """torch's fused AdamW (``optim.fused``): its step allocates no temporaries."""
    reduce_bucket_elements: int = 200_000_000
    """DeepSpeed's reduce bucket (Lightning's default), held in the weights' dtype under ZeRO-2/3."""


def _shard(stage: int | None, from_stage: int, ranks: int) -> int:
    return ranks if stage is not None and stage >= from_stage else 1


def activation_bytes_per_token(
    shape: ModelShape, a: int, checkpointing: bool, keep_fraction: float
) -> dict[str, float]:
    """Bytes autograd keeps per token of a micro-batch: per decoder layer, and outside the layers.

    ``a`` is the activations' dtype size; ``keep_fraction`` = logits positions / sequence length (only those
    positions go through the final projection).
    """
    h, kv, i = shape.hidden_size, shape.kv_dim, shape.intermediate_size
    full_layer = 2 * h * (4 + 2 * a) + a * (2 * h + 2 * kv + 4 * i) + 4 * shape.num_heads + 8
    # final norm (fp32 input + normed), the kept positions' projection input, rotary cos/sin, token ids
    outside = h * (4 + a) + keep_fraction * h * a + 2 * shape.head_dim * a + 8
    kept_layer = a * h if checkpointing else full_layer
    return {"kept_per_layer": kept_layer, "recomputed_layer": full_layer if checkpointing else 0, "outside": outside}


def trainer_memory(shape: ModelShape, t: TrainLayout) -> dict[str, int]:
    """Per-device bytes of one trainer rank, by component, with the peak."""
    p, w, s = shape.num_params(), t.weight_bytes, t.zero_stage
    deepspeed = s is not None
    seq = t.prompt_length + t.completion_length
    tokens = t.micro_batch_size * seq
    keep = t.completion_length + 1  # logits_to_keep
    v = shape.vocab_size
    c = min(t.logprob_chunk_size, t.micro_batch_size)
    m = {
        "weights": p * w // _shard(s, 3, t.ranks),
        "master_weights": 4 * p // _shard(s, 1, t.ranks) if deepspeed and w < 4 else 0,
        "optimizer_states": (8 * p // _shard(s, 1, t.ranks)) if deepspeed else 2 * p * w,
        "gradients": p * w // _shard(s, 2, t.ranks),
        "deepspeed_buckets": t.reduce_bucket_elements * w if s is not None and s >= 2 else 0,
        "reference": p * w if t.reference else 0,
    }
    act = {}
    for ckpt in (False, True):
        per = activation_bytes_per_token(shape, t.activation_bytes, ckpt, keep / seq)
        kept = tokens * (shape.num_layers * per["kept_per_layer"] + per["outside"])
        act[ckpt] = (int(kept), int(tokens * per["recomputed_layer"]))
    kept, recomputed = act[t.gradient_checkpointing]
    m["activations"] = kept
    m["activations_without_checkpointing"] = act[False][0]
    m["activations_with_checkpointing"] = act[True][0] + act[True][1]
    m["logits_kept"] = t.micro_batch_size * keep * v * t.activation_bytes
    m["logprob_backward"] = 2 * c * keep * v * t.activation_bytes
    # Each log-prob chunk is its own forward; autograd sums a parameter's gradient over the chunks before
    # accumulating it, so with several chunks per micro-batch a full extra gradient is pending during backward.
    m["pending_gradients"] = p * w if t.micro_batch_size > c else 0
    m["backward_transient"] = max(m["logprob_backward"], recomputed + m["pending_gradients"])
    # No-grad passes (reference, old policy), chunk by chunk: while a chunk's logits are built the previous chunk's
    # are still referenced, next to the last layer's hidden states; then the log-softmax works on fp32
    # [completion, vocab] rows, at most two at a time.
    chunk_logits = c * keep * v * t.activation_bytes
    hidden = c * (3 * seq + keep) * shape.hidden_size * t.activation_bytes
    m["nograd_logprob_pass"] = max(2 * chunk_logits + hidden, chunk_logits + min(c, 2) * t.completion_length * v * 4)
    # the optimizer step: DeepSpeed upcasts the gradient partition to fp32 for its step; torch's fused AdamW works in
    # place, its per-parameter and foreach steps allocate ~2 of the largest tensor.
    if deepspeed and w < 4:
        m["optimizer_step"] = 4 * p // _shard(s, 1, t.ranks)
    else:
        m["optimizer_step"] = 0 if t.fused_optimizer else 2 * shape.largest_tensor() * w
    static = sum(m[k] for k in ("weights", "master_weights", "optimizer_states", "gradients", "reference"))
    static += m["deepspeed_buckets"]
    micro_batch = kept + m["logits_kept"] + m["backward_transient"]
    m["peak"] = static + max(micro_batch, m["nograd_logprob_pass"], m["optimizer_step"])
    return m


def vllm_memory(shape: ModelShape, dtype_bytes: int, sequences: int, seq_len: int) -> dict[str, int]:
    """Bytes of a vLLM engine holding ``sequences`` sequences of ``seq_len`` tokens at once."""
    kv_per_token = shape.num_layers * 2 * shape.num_kv_heads * shape.head_dim * dtype_bytes
    weights = shape.num_params() * dtype_bytes
    kv = sequences * seq_len * kv_per_token
    return {"weights": weights, "kv_cache": kv, "kv_bytes_per_token": kv_per_token, "peak": weights + kv}


def fits(peak: int, card_gib: float, usable_fraction: float = 1.0) -> bool:
    return peak + RUNTIME_RESERVE_GIB * GIB <= usable_fraction * card_gib * GIB


# ------------------------------------------------------------------------------------------------ config
def _zero_stage(strategy: Any) -> int | None:
    """The ZeRO stage a Lightning strategy runs, None without DeepSpeed.

    >>> _zero_stage("deepspeed_stage_2"), _zero_stage("deepspeed_stage_3_offload"), _zero_stage("deepspeed")
    (2, 3, 2)
    >>> _zero_stage("ddp") is None
    True
    """
    if isinstance(strategy, dict):  # class_path form
        if "DeepSpeed" not in str(strategy.get("class_path", "")):
            return None
        return int((strategy.get("init_args") or {}).get("stage", 2))
    name = str(strategy)
    if "deepspeed" not in name.lower():
        return None
    return int(name.split("stage_")[1][0]) if "stage_" in name else 2


def _ranks(trainer: Any) -> int:
    devices = trainer.get("devices", 1)
    per_node = len(devices) if isinstance(devices, list) else int(devices) if str(devices).isdigit() else 1
    return per_node * int(trainer.get("num_nodes", 1) or 1)


def plan_from_config(config: Any) -> dict[str, Any]:
    """The memory plan of a parsed ``openrs-pl fit`` config (a jsonargparse Namespace or nested dict)."""
    cfg = config.as_dict() if hasattr(config, "as_dict") else config
    model, trainer, data, rollout = cfg["model"], cfg["trainer"], cfg["data"], cfg.get("rollout") or {}
    grpo = model.get("grpo") or {}
    shape = load_shape(model["name_or_path"])
    ranks, stage = _ranks(trainer), _zero_stage(trainer.get("strategy"))
    torch_dtype = model.get("torch_dtype", "auto")
    weight_bytes = DTYPE_BYTES[shape.dtype if torch_dtype == "auto" else torch_dtype]
    if stage is not None and "16" in str(trainer.get("precision")):
        weight_bytes = 2  # DeepSpeed casts the module to 16 bits and keeps fp32 masters
    activation_bytes = 2 if weight_bytes == 2 or "16" in str(trainer.get("precision")) else 4
    g = rollout.get("num_generations", 6)
    layout = TrainLayout(
        ranks=ranks,
        zero_stage=stage,
        weight_bytes=weight_bytes,
        activation_bytes=activation_bytes,
        micro_batch_size=grpo.get("micro_batch_size", 6),
        prompt_length=data["max_prompt_length"],
        completion_length=rollout.get("max_completion_length", 3584),
        logprob_chunk_size=grpo.get("logprob_chunk_size", 2),
        reference=grpo.get("beta", 0.04) > 0,
        gradient_checkpointing=bool(model.get("gradient_checkpointing")),
        fused_optimizer=bool((model.get("optim") or {}).get("fused", True)),
    )
    plan: dict[str, Any] = {
        "model": model["name_or_path"],
        "shape": asdict(shape),
        "num_params": shape.num_params(),
        "layout": asdict(layout),
        "trainer": trainer_memory(shape, layout),
    }
    vllm = rollout.get("vllm") or {}
    if rollout.get("engine") == "vllm":
        dtype = vllm.get("dtype", "auto")
        dedicated = vllm.get("mode", "dedicated") == "dedicated"
        prompts = data["prompts_per_step"] * (ranks if dedicated else 1)
        seq_len = min(vllm.get("max_model_len", 4608), layout.prompt_length + layout.completion_length)
        plan["vllm"] = vllm_memory(shape, DTYPE_BYTES[shape.dtype if dtype == "auto" else dtype], prompts * g, seq_len)
        plan["vllm"] |= {
            "mode": "dedicated" if dedicated else "colocate",
            "sleep_mode": bool(vllm.get("enable_sleep_mode")),
            "sequences": prompts * g,
            "seq_len": seq_len,
        }
        plan["vllm_usable_fraction"] = vllm.get("gpu_memory_utilization", 0.7)
    return plan


def verdicts(plan: dict[str, Any], cards: list[float]) -> dict[str, dict[str, bool]]:
    """Fits / does not fit per card size, for the trainer device and the vLLM device.

    vLLM takes ``gpu_memory_utilization`` of the card up front; colocated on a trainer device, that share is
    only given back during training with sleep mode.
    """
    vllm = plan.get("vllm")
    out: dict[str, dict[str, bool]] = {"trainer": {}, "vllm": {}}
    for gib in cards:
        key, trainer_need = f"{gib:g}", plan["trainer"]["peak"]
        if vllm is not None:
            fraction = plan["vllm_usable_fraction"]
            out["vllm"][key] = fits(vllm["peak"], gib, fraction)
            if vllm["mode"] == "colocate" and not vllm["sleep_mode"]:
                trainer_need += int(fraction * gib * GIB)
        out["trainer"][key] = fits(trainer_need, gib)
    return out


def format_plan(plan: dict[str, Any], cards: list[float]) -> str:
    t, layout = plan["trainer"], plan["layout"]
    stage = "no DeepSpeed" if layout["zero_stage"] is None else f"ZeRO-{layout['zero_stage']}"
    lines = [
        f"model {plan['model']}: {plan['num_params'] / 1e9:.3f}B parameters",
        f"trainer: {layout['ranks']} rank(s), {stage}, {layout['weight_bytes']}-byte weights, micro-batch "
        f"{layout['micro_batch_size']} x ({layout['prompt_length']} + {layout['completion_length']}) tokens, "
        f"checkpointing {'on' if layout['gradient_checkpointing'] else 'off'}",
        "",
        f"{'trainer rank (per device)':<44}{'GiB':>9}",
    ]
    rows = [
        ("weights", "weights"),
        ("fp32 master weights", "master_weights"),
        ("Adam states", "optimizer_states"),
        ("gradients", "gradients"),
        ("DeepSpeed reduce bucket", "deepspeed_buckets"),
        ("frozen reference", "reference"),
        ("activations (as configured)", "activations"),
        ("  without checkpointing", "activations_without_checkpointing"),
        ("  with checkpointing (+1 layer recomputed)", "activations_with_checkpointing"),
        ("logits kept for backward", "logits_kept"),
        ("log-prob backward buffers", "logprob_backward"),
        ("gradients pending over log-prob chunks", "pending_gradients"),
        ("backward transient (max of the above)", "backward_transient"),
        ("no-grad log-prob pass buffers", "nograd_logprob_pass"),
        ("optimizer step temporaries", "optimizer_step"),
        ("PEAK", "peak"),
    ]
    lines += [f"{label:<44}{t[key] / GIB:>9.2f}" for label, key in rows]
    if "vllm" in plan:
        v = plan["vllm"]
        lines += [
            "",
            f"vLLM ({v['mode']}): {v['sequences']} sequences x {v['seq_len']} tokens in flight, "
            f"{v['kv_bytes_per_token'] / 1024:.1f} KiB KV per token",
            f"{'  weights':<44}{v['weights'] / GIB:>9.2f}",
            f"{'  KV cache':<44}{v['kv_cache'] / GIB:>9.2f}",
            f"{'  PEAK':<44}{v['peak'] / GIB:>9.2f}",
        ]
    verdict = verdicts(plan, cards)
    lines += ["", f"fits (peak + {RUNTIME_RESERVE_GIB:g} GiB reserve; vLLM within gpu_memory_utilization):"]
    for role, by_card in verdict.items():
        if by_card:
            lines.append(f"  {role:<8}" + "  ".join(f"{c} GiB: {'yes' if ok else 'NO'}" for c, ok in by_card.items()))
    return "\n".join(lines)


def main(argv: list[str], cli_class: Any) -> int:
    """``openrs-pl plan --config C [--key.path value ...] [--gpu-memory GB] [--json]``; config keys as for ``fit``."""
    parser = argparse.ArgumentParser(prog="openrs-pl plan", description="Per-device memory plan of a config.")
    parser.add_argument("--gpu-memory", type=float, action="append", default=[], help="also judge this card (GiB)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    own, fit_args = parser.parse_known_args(argv)

    class _ParseOnly(cli_class):
        def instantiate_classes(self) -> None:  # the plan needs the config, not the models
            pass

    from openrs_pl.data.datamodule import ProblemDataModule
    from openrs_pl.grpo.module import GRPOModule

    with warnings.catch_warnings():  # "args given while sys.argv has values": ours are sys.argv minus `plan`
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        config = _ParseOnly(GRPOModule, ProblemDataModule, args=fit_args, run=False).config
    try:
        plan = plan_from_config(config)
    except ValueError as error:  # e.g. a model folder that does not exist yet
        print(f"openrs-pl plan: error: {error}", file=sys.stderr)
        return 2
    cards = [*CARDS_GIB, *own.gpu_memory]
    if own.json:
        print(json.dumps(plan | {"fits": verdicts(plan, cards)}, indent=2))
    else:
        print(format_plan(plan, cards))
    return 0
