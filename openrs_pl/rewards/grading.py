"""The math grading core: parse a gold answer and a completion's final answer with math-verify, then verify.

Used by the ``accuracy``/``cosine``/``length`` rewards and by evaluation, so training and evaluation grade alike.

Parse settings (Open-RS recipe, ``shared/research/openrs-recipe.md`` §2 and §4):

* ``pred_mode="openrs"`` is the recipe's accuracy reward: ``LatexExtractionConfig`` with ``NormalizationConfig(
  nits=False, malformed_operators=False, basic_latex=True, equations=True, boxed="all", units=True)``,
  ``boxed_match_priority=0`` (the last ``\\boxed{}`` is tried first), ``try_extract_without_anchor=False``,
  ``extraction_mode="first_match"``, and the recipe's argument order ``verify(answer, gold)``. The recipe's
  cosine/length rewards wrote ``boxed=True``, which newer latex2sympy2-extended no longer accepts; boxed matches
  are normalised with ``boxed="last"`` either way, so they share this parse.
* ``pred_mode="lighteval"`` is the evaluation's parse: ``ExprExtractionConfig`` + ``LatexExtractionConfig(
  boxed_match_priority=0)``, any match, first-match string fallback, ``verify(gold, answer, float_rounding=5)``;
  a gold that does not parse is compared as its raw string, as lighteval does.
* ``gold_mode="solution"`` parses the full worked solution, first match, ``[LatexExtractionConfig()]`` (recipe);
  note "first match" means the first *extraction attempt* in priority order, which for a solution ending in
  ``\\boxed{..}`` is that box. ``"latex"`` parses a short final answer (``$`` signs dropped, wrapped in
  ``\\boxed{}``); ``"expr"`` parses an integer-style answer with ``ExprExtractionConfig`` (AIME/AMC).

Timeouts: math-verify's own timeout uses ``signal.alarm``, which only works in the main thread. Grading here
therefore runs in a small persistent pool of worker *subprocesses* (plain ``subprocess.Popen`` running this file,
so it also works inside daemonic DataLoader/Lightning workers, where ``multiprocessing`` may not start children,
and from any thread). Each task runs in the worker's main thread under a soft ``setitimer`` deadline of
``timeout_s``; if the worker does not answer by ``timeout_s + _KILL_GRACE_S`` (e.g. stuck in C code that never
returns to the interpreter) it is killed and restarted. Either way the verdict is ``correct=False,
timed_out=True``; an exception gives ``correct=False`` with its text in ``error``.

Long completions: math-verify's regex pass over the whole text is quadratic on some inputs (10k characters of
unclosed ``\\[`` take 0.5-1.7 s, 100k characters minutes), so only a tail is parsed: from ``_TAIL_CHARS`` (4000)
characters before the last ``\\boxed`` to the end, or the last ``_TAIL_CHARS`` characters if there is no box.
Extraction tries the rightmost matches first (boxes first), so this is equivalent whenever the answer found near
the end parses, which includes every completion whose last box parses. It differs only when nothing in the tail
yields an answer and an earlier part would have: a completion with no box whose last "answer: $..$" lies more
than 4000 characters before its end, or (``lighteval``'s any-match fallback) one whose last box does not parse.
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
from dataclasses import dataclass
from functools import cache
from typing import IO, Any, Literal

GoldMode = Literal["latex", "expr", "solution"]
PredMode = Literal["openrs", "lighteval"]

_TAIL_CHARS = 4000
_KILL_GRACE_S = 2.0
_WORKER_START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Verdict:
    """The outcome of grading one completion against one gold answer.

    Attributes:
        correct: the completion's final answer equals the gold.
        pred: the extracted answer as text ("" if nothing was extracted).
        gold_ok: the gold parsed to something.
        timed_out: grading exceeded its wall-clock limit (then ``correct`` is False).
        error: the exception text if parsing or verifying raised, else None.
    """

    correct: bool
    pred: str
    gold_ok: bool
    timed_out: bool
    error: str | None


@cache
def _configs() -> dict[str, list[Any]]:
    """The extraction configs of every mode (built lazily: math-verify is imported only where grading runs)."""
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    openrs_norm = NormalizationConfig(
        nits=False, malformed_operators=False, basic_latex=True, equations=True, boxed="all", units=True
    )
    return {
        "latex": [LatexExtractionConfig(), ExprExtractionConfig()],
        "expr": [ExprExtractionConfig()],
        "solution": [LatexExtractionConfig()],
        "openrs": [
            LatexExtractionConfig(
                normalization_config=openrs_norm, boxed_match_priority=0, try_extract_without_anchor=False
            )
        ],
        "lighteval": [ExprExtractionConfig(), LatexExtractionConfig(boxed_match_priority=0)],
    }


def wrap_gold(gold: str) -> str:
    """Turn a short final answer (bare or in ``$..$``) into text math-verify's LaTeX extraction anchors on.

    >>> wrap_gold("$2n-2$")
    '\\\\boxed{2n-2}'
    >>> wrap_gold("$69$,$84$")
    '\\\\boxed{69,84}'
    >>> wrap_gold("\\\\boxed{3}")
    '\\\\boxed{3}'
    """
    gold = gold.strip()
    if "\\boxed" in gold:
        return gold
    # Unescaped dollars only delimit math in a final answer (OlympiadBench writes "$69$,$84$"); \$ is a currency sign.
    unwrapped = gold.replace("\\$", "\0").replace("$", "").replace("\0", "\\$").strip()
    return f"\\boxed{{{unwrapped}}}"


def answer_tail(completion: str, tail_chars: int = _TAIL_CHARS) -> str:
    """The part of a completion its final answer is extracted from (see the module docstring).

    >>> answer_tail("x" * 10_000 + "so \\\\boxed{7}.", tail_chars=5)
    'xxso \\\\boxed{7}.'
    >>> answer_tail("short")
    'short'
    """
    last_box = completion.rfind("\\boxed")
    start = last_box - tail_chars if last_box >= 0 else len(completion) - tail_chars
    return completion[max(0, start) :]


def parse_gold(gold: str, gold_mode: GoldMode) -> list[Any]:
    """Parse a gold answer as the mode prescribes (no timeout of its own: call inside a worker)."""
    from math_verify import parse

    if gold_mode == "solution":
        return parse(gold, _configs()["solution"], extraction_mode="first_match", parsing_timeout=None)
    if gold_mode == "expr":
        return parse(gold, _configs()["expr"], parsing_timeout=None)
    return parse(wrap_gold(gold), _configs()["latex"], parsing_timeout=None)


def parse_pred(completion: str, pred_mode: PredMode) -> list[Any]:
    """Parse a completion's final answer as the mode prescribes (no timeout of its own: call inside a worker)."""
    from math_verify import parse

    text = answer_tail(completion)
    if pred_mode == "openrs":
        return parse(text, _configs()["openrs"], extraction_mode="first_match", parsing_timeout=None)
    return parse(text, _configs()["lighteval"], parsing_timeout=None)


def _verify_pairs(gold: list[Any], pred: list[Any], pred_mode: PredMode) -> tuple[bool, str | None]:
    """``verify`` over every gold x pred pair as math-verify does, but reporting an exception instead of hiding it.

    An exception in one pair scores that pair False (math-verify's own behaviour); it is reported only if no pair
    matched.
    """
    from math_verify import verify

    error = None
    for g in gold:
        for p in pred:
            try:
                if pred_mode == "openrs":
                    # The recipe's argument order (answer first); verify is asymmetric for assignments/intervals.
                    ok = verify(p, g, timeout_seconds=None, raise_on_error=True)
                else:
                    ok = verify(g, p, float_rounding=5, timeout_seconds=None, raise_on_error=True)
            except Exception as e:  # noqa: BLE001 - any failure of sympy must score 0, never crash a step
                error = f"{type(e).__name__}: {e}"[:500]
                continue
            if ok:
                return True, None
    return False, error


def grade_local(completion: str, gold: str, gold_mode: GoldMode = "latex", pred_mode: PredMode = "openrs") -> Verdict:
    """Grade in the calling process with no timeout (the pool's workers call this; tests may too).

    >>> grade_local("so the answer is \\\\boxed{\\\\frac{1}{2}}", "0.5").correct
    True
    """
    try:
        gold_parsed = parse_gold(gold, gold_mode)
        gold_ok = len(gold_parsed) > 0
        if not gold_ok:
            if pred_mode == "openrs":
                return Verdict(False, "", False, False, None)
            gold_parsed = [gold]
        pred_parsed = parse_pred(completion, pred_mode)
        pred_text = str(pred_parsed[-1]) if pred_parsed else ""
        correct, error = _verify_pairs(gold_parsed, pred_parsed, pred_mode)
        return Verdict(correct, pred_text, gold_ok, False, error)
    except Exception as e:  # noqa: BLE001 - reported in the verdict and counted by the caller
        return Verdict(False, "", True, False, f"{type(e).__name__}: {e}"[:500])


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


# The worker is started from this file's path, not as ``openrs_pl.rewards.grading``, so it does not import the
# package's __init__ (and torch): startup stays ~1 s, which matters each time a stuck worker is replaced.
_WORKER_BOOT = (
    "import importlib.util, os, sys\n"
    "spec = importlib.util.spec_from_file_location('_openrs_grading_worker', sys.argv[1])\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = mod\n"
    "spec.loader.exec_module(mod)\n"
    # Replies get a private copy of stdout; fd 1 then points at stderr so stray prints cannot corrupt the protocol.
    "replies = os.fdopen(os.dup(1), 'wb')\n"
    "os.dup2(2, 1)\n"
    "mod.serve_worker(sys.stdin.buffer, replies)\n"
)


class _Worker:
    """One grading subprocess and its pipes."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_BOOT, os.path.abspath(__file__)],
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


class GradingPool:
    """A small persistent pool of grading subprocesses with a per-task wall-clock limit.

    Thread-safe (one batch at a time); safe to use from daemonic processes because it uses ``subprocess``.
    """

    def __init__(self, workers: int) -> None:
        self._workers = [_Worker() for _ in range(workers)]
        self._lock = threading.Lock()
        self.restarts = 0

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
                        results[task] = Verdict(False, "", True, False, f"grading worker died: {e!r}")
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
