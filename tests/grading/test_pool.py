"""The grading pool: long and adversarial inputs, threads, DataLoader workers, stuck and killed workers."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

from openrs_pl.grading import WORKER_DIED, GradingPool, Verdict, get_pool, grade, grade_batch
from openrs_pl.grading.pool import _KILL_GRACE_S
from openrs_pl.rewards.correctness import accuracy_reward
from openrs_pl.rewards.counters import collecting


def boxed(answer: str) -> str:
    return f"The final answer is $\\boxed{{{answer}}}$."


def test_long_completion_is_fast() -> None:
    text = "Let $x^2+\\frac{a}{b}=\\sqrt{c}$ and so on. " * 2500 + boxed("12")  # ~100 kB
    start = time.monotonic()
    verdict = grade(text, "12")
    assert verdict.correct
    assert time.monotonic() - start < 2.0
    unboxed = text.replace(boxed("12"), "The answer is $12$.")  # no box: the anchor near the end is found
    assert grade(unboxed, "12").correct


ADVERSARIAL = {
    "deep_nesting": "\\boxed{" + "{" * 50_000 + "}" * 50_000 + "}",
    "frac_bomb": "$\\boxed{" + "\\frac{1}{" * 12_500 + "1" + "}" * 12_500 + "}$",
    "unclosed_brackets": "\\[ x " * 20_000,
    "latex_100k": "$" + "\\left(\\sum_{i=1}^{n} x_i^{2}\\right)" * 3000 + "$ \\boxed{" + "x+" * 2000 + "1}",
    "unclosed_box": "\\boxed{" * 20_000,
}


def test_adversarial_inputs_time_out_instead_of_hanging() -> None:
    timeout_s = 1.0
    grade("\\boxed{1}", "1")  # start the pool outside the timed region
    start = time.monotonic()
    verdicts = grade_batch(list(ADVERSARIAL.values()), ["1"] * len(ADVERSARIAL), timeout_s=timeout_s)
    elapsed = time.monotonic() - start
    assert elapsed < len(ADVERSARIAL) * (timeout_s + _KILL_GRACE_S) + 5.0
    assert not any(v.correct for v in verdicts)
    assert sum(v.timed_out for v in verdicts) >= 2  # at least the nesting and the \frac bomb
    # the pool is still usable afterwards
    assert grade(boxed("1"), "1").correct


def test_grading_from_a_thread() -> None:
    results: list[list[Verdict]] = []
    thread = threading.Thread(target=lambda: results.append(grade_batch([boxed("3"), boxed("4")], ["3", "3"])))
    thread.start()
    thread.join(timeout=60)
    assert [v.correct for v in results[0]] == [True, False]


class _GradingDataset(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> tuple[bool, bool]:
        return grade(boxed(str(i)), "1").correct, torch.utils.data.get_worker_info() is not None


def test_grading_inside_dataloader_workers() -> None:
    """DataLoader workers are daemonic processes, which multiprocessing forbids to have children."""
    loader = torch.utils.data.DataLoader(_GradingDataset(), batch_size=None, num_workers=1)
    assert [(bool(c), bool(w)) for c, w in loader] == [(False, True), (True, True)]


def test_stuck_worker_is_killed_and_replaced() -> None:
    pool = GradingPool(1)
    try:
        assert pool.map([(boxed("1"), "1", "latex", "openrs")], 1.0)[0].correct
        stuck = pool.pids[0]
        os.kill(stuck, signal.SIGSTOP)  # ignores the soft timer: only the hard deadline can end the task
        start = time.monotonic()
        verdict = pool.map([(boxed("1"), "1", "latex", "openrs")], 0.5)[0]
        assert verdict == Verdict(False, "", True, True, None)
        assert time.monotonic() - start < 0.5 + _KILL_GRACE_S + 1.0
        assert pool.restarts == 1 and pool.pids[0] != stuck
        assert pool.map([(boxed("2"), "2", "latex", "openrs")], 5.0)[0].correct
    finally:
        pool.close()


def test_dead_worker_is_replaced() -> None:
    pool = GradingPool(1)
    try:
        assert pool.map([(boxed("1"), "1", "latex", "openrs")], 1.0)[0].correct
        os.kill(pool.pids[0], signal.SIGKILL)  # died between tasks
        time.sleep(0.2)
        assert pool.map([(boxed("1"), "1", "latex", "openrs")], 5.0)[0].correct
        victim = pool.pids[0]
        threading.Timer(0.5, os.kill, (victim, signal.SIGKILL)).start()  # dies mid-task
        verdict = pool.map([(ADVERSARIAL["deep_nesting"], "1", "latex", "openrs")], 30.0)[0]
        assert not verdict.correct and verdict.error is not None and verdict.error.startswith(WORKER_DIED)
        assert pool.restarts == 2 and pool.crashes == 1
    finally:
        pool.close()


def test_crashed_worker_is_replaced_and_its_sample_counted(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 13: a grading worker killed for real mid-task; the reward call survives, scores that sample 0, and
    counts it (``grader_crashes`` and ``errors`` reach ``rewards/<name>/...`` through RewardSet's counters)."""
    shared = get_pool()
    grade(boxed("1"), "1")  # workers started
    crashes, restarts = shared.crashes, shared.restarts
    victims = list(shared.pids)
    killer = threading.Timer(0.5, lambda: [os.kill(pid, signal.SIGKILL) for pid in victims])
    killer.start()
    with collecting() as counts, caplog.at_level("WARNING", logger="openrs_pl.grading.pool"):
        # a slow task, so the kill lands mid-task
        rewards = accuracy_reward([ADVERSARIAL["deep_nesting"]], solution=["\\boxed{1}"], timeout_s=30.0)
    killer.join()
    assert rewards == [0.0]
    assert counts["grader_crashes"] == 1 and counts["errors"] == 1
    assert shared.crashes == crashes + 1 and shared.restarts >= restarts + 1
    assert "grading worker died (exit code -9)" in caplog.text
    assert not set(shared.pids) & set(victims)  # every killed worker was replaced
    assert accuracy_reward([boxed("2"), boxed("3")], solution=["\\boxed{2}"] * 2) == [1.0, 0.0]
