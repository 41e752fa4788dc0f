"""pass@k: the estimator against brute-force enumeration, and the Metric under DDP against a single process."""

from __future__ import annotations

import itertools
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from openrs_pl.metrics.passk import PassAtK, pass_at_k


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of the n samples (c of them correct) that contain a correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_estimator_matches_enumeration(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_estimator_matches_binomial_form_for_large_n() -> None:
    # Large n: the binomial form in exact integers is the reference the product form must reproduce.
    n, c, k = 200, 7, 16
    expected = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("n", "c", "k", "message"),
    [(4, 1, 0, "1 <= k <= n"), (4, 1, 5, "1 <= k <= n"), (4, 5, 1, "0 <= c <= n"), (4, -1, 1, "0 <= c <= n")],
)
def test_estimator_rejects_inconsistent_counts(n: int, c: int, k: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pass_at_k(n, c, k)


def test_metric_matrix_and_counts_agree() -> None:
    verdicts = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 0]], dtype=torch.bool)
    from_matrix = PassAtK(ks=(1, 2, 4))
    from_matrix.update(verdicts)
    from_counts = PassAtK(ks=(1, 2, 4))
    from_counts.update(verdicts.sum(dim=1), torch.full((4,), 4))
    a, b = from_matrix.compute(), from_counts.compute()
    for k in (1, 2, 4):
        expected = sum(brute_force_pass_at_k(4, int(row.sum()), k) for row in verdicts) / 4
        assert a[f"pass@{k}"].item() == pytest.approx(expected)
        assert b[f"pass@{k}"].item() == pytest.approx(expected)
    assert a["pass@1"].item() == pytest.approx(verdicts.float().mean().item())


def test_metric_mixed_sample_counts() -> None:
    metric = PassAtK(ks=(1, 2))
    metric.update(torch.tensor([1, 3]), torch.tensor([2, 4]))
    expected_1 = (1 / 2 + 3 / 4) / 2
    expected_2 = (brute_force_pass_at_k(2, 1, 2) + brute_force_pass_at_k(4, 3, 2)) / 2
    out = metric.compute()
    assert out["pass@1"].item() == pytest.approx(expected_1)
    assert out["pass@2"].item() == pytest.approx(expected_2)


def test_metric_rejects_bad_updates() -> None:
    metric = PassAtK(ks=(1, 4))
    with pytest.raises(ValueError, match="at least 4 samples"):
        metric.update(torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[problems, samples\]"):
        metric.update(torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"lie in \[0, num_samples\]"):
        metric.update(torch.tensor([5]), torch.tensor([4]))
    with pytest.raises(ValueError, match="positive integers"):
        PassAtK(ks=(0,))


def test_metric_empty_is_nan() -> None:
    assert math.isnan(PassAtK().compute()["pass@1"].item())


# --- DDP: each rank updates a different, uneven shard; every rank must compute the single-process value. ---

VERDICTS = torch.rand(11, 6, generator=torch.Generator().manual_seed(0)) < 0.3  # [problems, samples]
SHARDS = [slice(0, 3), slice(3, 11)]  # uneven on purpose: 3 and 8 problems


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        metric = PassAtK(ks=(1, 2, 6))
        shard = VERDICTS[SHARDS[rank]]
        # Two updates per rank, the second possibly empty for neither rank: exercise list-state concatenation.
        half = shard.shape[0] // 2
        metric.update(shard[:half])
        metric.update(shard[half:])
        torch.save({k: v.item() for k, v in metric.compute().items()}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_reduction_equals_single_process(tmp_path: Path) -> None:
    single = PassAtK(ks=(1, 2, 6))
    single.update(VERDICTS)
    expected = {k: v.item() for k, v in single.compute().items()}
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got == pytest.approx(expected, abs=1e-12), rank
    # The shards alone give different numbers, so equality above is not an accident of the data.
    local = PassAtK(ks=(1,))
    local.update(VERDICTS[SHARDS[0]])
    assert local.compute()["pass@1"].item() != pytest.approx(expected["pass@1"])
