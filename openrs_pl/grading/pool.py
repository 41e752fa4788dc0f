"""The grading pool: run :func:`~openrs_pl.grading.verify.grade_local` in worker subprocesses under a time limit.

math-verify's own timeout uses ``signal.alarm``, which only works in the main thread. Grading therefore runs in a
small persistent pool of worker *subprocesses* (plain ``subprocess.Popen``, so it also works inside daemonic
DataLoader/Lightning workers, where ``multiprocessing`` may not start children, and from any thread). Each task
runs in the worker's main thread under a soft ``setitimer`` deadline of ``timeout_s``; if the worker does not
answer by ``timeout_s + _KILL_GRACE_S`` (e.g. stuck in C code that never returns to the interpreter) it is killed
and replaced: the verdict is ``correct=False, timed_out=True``. A worker that dies mid-task (killed, out of memory)
is replaced too, and its sample is scored ``correct=False`` with ``error="grading worker died: ..."``; an exception
in math-verify gives ``correct=False`` with its text in ``error``. ``GradingPool.restarts`` counts replacements
and ``GradingPool.crashes`` the tasks lost to a dying worker (each logged as a warning); callers count the verdicts
whose error starts with :data:`WORKER_DIED` (``rewards/<name>/grader_crashes``, ``grader_crashes`` in eval
results).
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from openrs_pl.grading.verify import GoldMode, PredMode, Verdict, grade_local

logger = logging.getLogger(__name__)

WORKER_DIED = "grading worker died"
"""The start of a Verdict's ``error`` when its worker process died mid-task (the sample is scored 0)."""
_KILL_GRACE_S = 2.0
_WORKER_START_TIMEOUT_S = 60.0


class _SoftTimeout(BaseException):
    """Raised by the worker's timer; a BaseException so math-verify's ``except Exception`` cannot swallow it."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _SoftTimeout


def serve_worker(requests: IO[bytes], replies: IO[bytes]) -> None:
    """Worker loop: read pickled ``(completion, gold, gold_mode, pred_mode, timeout_s)``, write a Verdict tuple."""
    signal.signal(signal.SIGALRM, _on_alarm)
    # Disabling math-verify's signal timeouts (ours replaces them) makes it warn once per process; nothing to act on.
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Import math-verify and compile every mode's regexes now, so a task's time limit does not pay for them.
    for gold_mode in ("latex", "expr", "solution"):
        for pred_mode in ("openrs", "lighteval"):
            grade_local("\\boxed{1}", "\\boxed{1}", gold_mode, pred_mode)
    pickle.dump("ready", replies)
    replies.flush()
    while True:
        try:
            completion, gold, gold_mode, pred_mode, timeout_s = pickle.load(requests)
        except EOFError:
            return
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
            verdict = grade_local(completion, gold, gold_mode, pred_mode)
            signal.setitimer(signal.ITIMER_REAL, 0)
        except _SoftTimeout:
            verdict = Verdict(False, "", True, True, None)
        pickle.dump(tuple(verdict.__dict__.values()), replies)
        replies.flush()


# The worker imports this package from the checkout it was started from (the package root goes first on sys.path);
# ``openrs_pl`` and ``openrs_pl.grading`` import neither torch nor transformers, so startup stays ~1 s, which matters
# each time a stuck worker is replaced.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_WORKER_BOOT = (
    "import os, sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from openrs_pl.grading.pool import serve_worker\n"
    # Replies get a private copy of stdout; fd 1 then points at stderr so stray prints cannot corrupt the protocol.
    "replies = os.fdopen(os.dup(1), 'wb')\n"
    "os.dup2(2, 1)\n"
    "serve_worker(sys.stdin.buffer, replies)\n"
)


class _Worker:
    """One grading subprocess and its pipes."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_BOOT, _PACKAGE_ROOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C in the trainer's terminal should not hit the workers mid-task
        )
        self.ready = False

    def fileno(self) -> int:
        assert self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def send(self, task: tuple) -> None:
        assert self.proc.stdin is not None
        pickle.dump(task, self.proc.stdin)
        self.proc.stdin.flush()

    def recv(self) -> Any:
        assert self.proc.stdout is not None
        return pickle.load(self.proc.stdout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:  # closing the write end flushes into a dead process's pipe
                    pass


def _exit_code(worker: _Worker) -> int | None:
    """The exit code of a worker whose pipe closed (None if it is somehow still running after a second)."""
    try:
        return worker.proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        return None


class GradingPool:
    """A small persistent pool of grading subprocesses with a per-task wall-clock limit.

    Thread-safe (one batch at a time); safe to use from daemonic processes because it uses ``subprocess``.
    """

    def __init__(self, workers: int) -> None:
        self._workers = [_Worker() for _ in range(workers)]
        self._lock = threading.Lock()
        self.restarts = 0
        self.crashes = 0

    def _await_ready(self, worker: _Worker) -> None:
        if not worker.ready:
            if not select.select([worker], [], [], _WORKER_START_TIMEOUT_S)[0] or worker.recv() != "ready":
                raise RuntimeError("math grading worker failed to start")
            worker.ready = True

    def _start(self, index: int, task: tuple) -> None:
        """Hand a task to worker ``index``, replacing the worker once if it has died since its last task."""
        for attempt in range(2):
            worker = self._workers[index]
            try:
                self._await_ready(worker)
                worker.send(task)
                return
            except (OSError, EOFError, pickle.UnpicklingError):
                if attempt:
                    raise
                self._replace(index)

    def _replace(self, index: int) -> None:
        self._workers[index].kill()
        self._workers[index] = _Worker()
        self.restarts += 1

    def map(self, tasks: Sequence[tuple[str, str, str, str]], timeout_s: float) -> list[Verdict]:
        """Grade ``(completion, gold, gold_mode, pred_mode)`` tasks; each gets ``timeout_s`` of worker time."""
        results: list[Verdict | None] = [None] * len(tasks)
        pending = deque(range(len(tasks)))
        busy: dict[int, tuple[int, float]] = {}  # worker index -> (task index, hard deadline)
        with self._lock:
            while pending or busy:
                for w in range(len(self._workers)):
                    if w not in busy and pending:
                        task = pending.popleft()
                        self._start(w, (*tasks[task], timeout_s))
                        busy[w] = (task, time.monotonic() + timeout_s + _KILL_GRACE_S)
                wait = max(0.0, min(deadline for _, deadline in busy.values()) - time.monotonic())
                readable = select.select([self._workers[w] for w in busy], [], [], wait)[0]
                for worker in readable:
                    w = self._workers.index(worker)
                    task, _ = busy.pop(w)
                    try:
                        results[task] = Verdict(*worker.recv())
                    except (EOFError, pickle.UnpicklingError) as e:  # the worker died (e.g. out of memory)
                        code = _exit_code(worker)
                        results[task] = Verdict(False, "", True, False, f"{WORKER_DIED} (exit code {code}): {e!r}")
                        self.crashes += 1
                        logger.warning("%s (exit code %s); replaced, its sample scored 0", WORKER_DIED, code)
                        self._replace(w)
                now = time.monotonic()
                for w, (task, deadline) in list(busy.items()):
                    if now >= deadline:
                        results[task] = Verdict(False, "", True, True, None)
                        del busy[w]
                        self._replace(w)
        return [r for r in results if r is not None]

    @property
    def pids(self) -> list[int]:
        """Process ids of the current workers."""
        return [w.proc.pid for w in self._workers]

    def close(self) -> None:
        """Stop every worker."""
        for worker in self._workers:
            worker.kill()


_POOL: GradingPool | None = None
_POOL_PID = -1
_POOL_LOCK = threading.Lock()


def default_pool_size() -> int:
    """Workers in the shared pool: ``OPENRS_GRADING_WORKERS`` if set, else half the CPUs (1..4)."""
    env = os.environ.get("OPENRS_GRADING_WORKERS")
    return int(env) if env else max(1, min(4, (os.cpu_count() or 2) // 2))


def get_pool() -> GradingPool:
    """The process-wide grading pool, created on first use (and anew in a forked child, which cannot share pipes)."""
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or _POOL_PID != os.getpid():
            _POOL = GradingPool(default_pool_size())
            _POOL_PID = os.getpid()
            atexit.register(_POOL.close)
        return _POOL


def grade_batch(
    completions: Sequence[str],
    golds: Sequence[str],
    gold_mode: GoldMode = "latex",
    pred_mode: PredMode = "openrs",
    *,
    timeout_s: float = 5.0,
) -> list[Verdict]:
    """Grade completions against golds (pairwise) in the grading pool, each under a wall-clock limit.

    Args:
        completions: completion texts.
        golds: gold answers (or full solutions for ``gold_mode="solution"``), one per completion.
        gold_mode: how to parse the gold (see the module docstring).
        pred_mode: how to parse the completion and verify (see the module docstring).
        timeout_s: wall-clock limit per completion; a timeout or exception yields ``correct=False``.

    Returns:
        One Verdict per completion.

    >>> [v.correct for v in grade_batch(["\\\\boxed{3}", "\\\\boxed{4}"], ["3", "3"])]
    [True, False]
    """
    if len(completions) != len(golds):
        raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
    if gold_mode not in ("latex", "expr", "solution"):
        raise ValueError(f"unknown gold_mode {gold_mode!r}; expected latex, expr or solution")
    if pred_mode not in ("openrs", "lighteval"):
        raise ValueError(f"unknown pred_mode {pred_mode!r}; expected openrs or lighteval")
    if not completions:
        return []
    return get_pool().map([(c, g, gold_mode, pred_mode) for c, g in zip(completions, golds, strict=True)], timeout_s)


def grade(
    completion: str,
    gold: str,
    gold_mode: GoldMode = "latex",
    pred_mode: PredMode = "openrs",
    *,
    timeout_s: float = 5.0,
) -> Verdict:
    """Grade one completion (see :func:`grade_batch`).

    >>> grade("Therefore, the final answer is: $\\\\boxed{12}$. I hope it is correct", "12", "expr", "lighteval")
    Verdict(correct=True, pred='12', gold_ok=True, timed_out=False, error=None)
    """
    return grade_batch([completion], [gold], gold_mode, pred_mode, timeout_s=timeout_s)[0]
