"""The grading pool: long and adversarial inputs, threads, DataLoader workers, stuck and killed workers."""

from __future__ import annotations

import os
import signal
import threading
import time

import torch

from openrs_pl.grading import GradingPool, Verdict, grade, grade_batch
from openrs_pl.grading.pool import _KILL_GRACE_S


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
        assert not verdict.correct and verdict.error is not None and "died" in verdict.error
        assert pool.restarts == 2
    finally:
        pool.close()
