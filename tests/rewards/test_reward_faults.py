"""Faults in user reward functions: each is scored as documented and counted, or fails fast in strict mode.

Every fault is a real misbehaving function, called through :class:`RewardSet` as training calls it.
"""

from __future__ import annotations

import math
import time

import pytest
import torch

from openrs_pl.rewards import RewardSet, RewardSpec
from openrs_pl.rewards.reward_set import FAULT_COUNTERS, RewardFault
from openrs_pl.rollout.advantages import group_advantages

N = 4


def raises(completions, **kwargs):
    raise KeyError("solution_typo")


def too_few(completions, **kwargs):
    return [1.0] * (len(completions) - 1)


def not_a_list(completions, **kwargs):
    return 1.0


def returns_inf(completions, **kwargs):
    return [1.0, math.inf, 0.0, -math.inf]


def returns_nan(completions, **kwargs):
    return [1.0, math.nan, 0.0, 1.0]


def returns_strings(completions, **kwargs):
    return ["1.0", 1.0, b"0", [0.5]]


def hangs(completions, **kwargs):
    time.sleep(30)
    return [1.0] * len(completions)


def good(completions, **kwargs):
    return [float(i) for i in range(len(completions))]


# function, counter, count, the function's expected values (nan = skipped / not applicable)
FAULTS = [
    (raises, "call_errors", 1, [math.nan] * N),
    (too_few, "wrong_length", 1, [math.nan] * N),
    (not_a_list, "wrong_length", 1, [math.nan] * N),
    (returns_inf, "nonfinite", 2, [1.0, 0.0, 0.0, 0.0]),
    (returns_nan, "nonfinite", 1, [1.0, 0.0, 0.0, 1.0]),
    (returns_strings, "non_numeric", 3, [0.0, 1.0, 0.0, 0.0]),
    (hangs, "call_timeouts", 1, [math.nan] * N),
]


def reward_set(func, monkeypatch: pytest.MonkeyPatch, strict: bool = False) -> RewardSet:
    monkeypatch.setattr(f"{__name__}.{func.__name__}", func)
    specs = [
        RewardSpec(f"{__name__}:{func.__name__}", 2.0, strict=strict, timeout=0.5),
        RewardSpec(f"{__name__}:good", 1.0),
    ]
    return RewardSet(specs)


@pytest.mark.parametrize(("func", "counter", "count", "expected"), FAULTS, ids=[f[0].__name__ for f in FAULTS])
def test_fault_is_scored_and_counted(func, counter: str, count: int, expected: list[float], monkeypatch, caplog):
    rs = reward_set(func, monkeypatch)
    out = rs([f"c{i}" for i in range(N)], prompts=["p"] * N, columns={})
    name = func.__name__
    torch.testing.assert_close(out.per_func[:, 0], torch.tensor(expected), equal_nan=True)
    # The other function still scores normally; the total is finite and its weighting documented.
    assert out.per_func[:, 1].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert out.total.isfinite().all()
    by_hand = [1.0 * i + (0.0 if math.isnan(v) else 2.0 * v) for i, v in enumerate(expected)]
    assert out.total.tolist() == by_hand
    assert out.stats[f"rewards/{name}/{counter}"] == count
    assert all(out.stats[f"rewards/{name}/{c}"] == 0 for c in FAULT_COUNTERS if c != counter)
    assert all(out.stats[f"rewards/good/{c}"] == 0 for c in FAULT_COUNTERS)
    assert f"reward {name!r}" in caplog.text
    # Group advantages of the scored batch are finite: the fault never reaches the loss.
    assert group_advantages(out.total, 2, "group").isfinite().all()


@pytest.mark.parametrize(("func", "counter", "count", "expected"), FAULTS, ids=[f[0].__name__ for f in FAULTS])
def test_strict_mode_fails_fast_naming_the_function(func, counter, count, expected, monkeypatch) -> None:
    rs = reward_set(func, monkeypatch, strict=True)
    with pytest.raises(RewardFault, match=f"reward '{func.__name__}': .*strict: true"):
        rs([f"c{i}" for i in range(N)], prompts=["p"] * N, columns={})


def test_timeout_returns_promptly(monkeypatch) -> None:
    rs = reward_set(hangs, monkeypatch)
    start = time.perf_counter()
    rs([f"c{i}" for i in range(N)], prompts=["p"] * N, columns={})
    assert time.perf_counter() - start < 5  # the 0.5 s limit, not the function's 30 s


def test_numbers_of_every_kind_are_accepted(monkeypatch) -> None:
    import numpy as np

    def mixed(completions, **kwargs):
        return [True, 2, np.float32(0.5), torch.tensor(0.25)]

    monkeypatch.setattr(f"{__name__}.good", mixed)
    out = RewardSet([RewardSpec(f"{__name__}:good", strict=True)])(["a"] * N, prompts=["p"] * N, columns={})
    assert out.per_func[:, 0].tolist() == [1.0, 2.0, 0.5, 0.25]


def test_overflowing_weighted_sum_is_zeroed(monkeypatch) -> None:
    def huge(completions, **kwargs):
        return [3e38, 1.0, 1.0, 1.0]

    monkeypatch.setattr(f"{__name__}.good", huge)
    out = RewardSet([RewardSpec(f"{__name__}:good", 2.0)])(["a"] * N, prompts=["p"] * N, columns={})
    assert out.total.tolist() == [0.0, 2.0, 2.0, 2.0]


def test_bad_timeout_is_rejected() -> None:
    with pytest.raises(ValueError, match="timeout must be > 0"):
        RewardSet([RewardSpec("format", timeout=0)])
