"""The math grading core: parse a gold answer and a completion's final answer with math-verify, then verify.

Used by the ``accuracy``/``cosine``/``length`` rewards and by evaluation, so training and evaluation grade alike.

Parse settings (the Open-RS recipe's reward code, github.com/knoveleng/open-rs, and lighteval's math metric):

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

Fixes on top of math-verify (measured against another evaluator on ~8,000 real completions, ``docs/grading.md``):

* Both modes, because it is about the data format of a gold: a gold written as an lm-eval style e-notation number
  (``8.7e8``, ``1e-3``; 58 of 272 Minerva golds) would be parsed with ``e`` as Euler's number (``1e-3`` ->
  ``-3 + E``), so no correct answer could match it; lighteval has the same bug, so these scores are more correct
  than the paper's. Such a gold is rewritten as ``m \\times 10^{k}`` before parsing, the same rewrite is applied
  to a boxed prediction written that way, and a numeric prediction must then agree with the gold's value to a
  relative ``_SCI_REL_TOL`` (math-verify's absolute ``float_rounding`` would make any two values below 1e-5 equal).
* ``lighteval`` only (the training reward keeps the recipe's behaviour): ordinal superscripts are dropped from
  the prediction (``12^{\\mathrm{th}}`` -> ``12``); ``X\\%`` also equals ``X``, as math-verify already has it for
  integers (``9\\% = 9``) but not for decimals; a bare multiple-choice gold ``(C)`` matches a prediction that
  starts with that choice (``\\text{(C) Plane}``); answers that only parse as strings are compared without spacing
  or braces around one symbol (``E_{1}, E_{2}`` = ``E_1,E_2``).

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
import math
import os
import pickle
import re
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
# A value given in e-notation must be matched to about 5 significant digits, like an ordinary number's 5 decimals.
_SCI_REL_TOL = 1e-5
_SCI_NUMBER = r"(-?\d+(?:\.\d+)?)[eE]([+-]?\d+)"
_SCI_BOXED = re.compile(r"\\boxed\{\s*" + _SCI_NUMBER + r"\s*\}")
_ORDINAL = r"(?:st|nd|rd|th)"
# 12^{\mathrm{th}}, 12^{\text{th}}, 12^\text{th}, 12^{th}, 12^{\rm th}
_ORDINAL_SUPERSCRIPT = re.compile(
    rf"(?<=\d)\s*\^\s*(?:\{{\s*(?:\\(?:mathrm|text|textrm)\s*\{{\s*{_ORDINAL}\s*\}}|\\rm\s*{_ORDINAL}|{_ORDINAL})\s*\}}"
    rf"|\\(?:mathrm|text|textrm)\s*\{{\s*{_ORDINAL}\s*\}})"
)
_CHOICE_GOLD = re.compile(r"\s*(?:\\text\{\s*)?\(?\s*([A-E])\s*\)?\s*\}?\s*")
# A prediction that starts with a parenthesised choice letter, possibly inside \text{..}/\textbf{..}: "(C) Plane"
_CHOICE_PRED = re.compile(r"\s*(?:\\[a-z]+\s*\{\s*)*\(\s*([A-E])\s*\)")
_LATEX_SPACE = re.compile(r"\s+|\\[,;:! ]|~")
_BRACED_SCRIPT = re.compile(r"([_^])\{(\w)\}")


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


def sci_gold_value(gold: str) -> float | None:
    """The value of a gold written as an e-notation number (lm-eval style), else None.

    >>> sci_gold_value("$8.7e8$"), sci_gold_value("1e-3"), sci_gold_value("e^{-3}")
    (870000000.0, 0.001, None)
    """
    text = gold.strip().strip("$").strip()
    return float(text) if re.fullmatch(_SCI_NUMBER, text) else None


def sci_to_latex(number: str) -> str:
    """Rewrite an e-notation number as LaTeX, so that ``e`` is not read as Euler's number.

    >>> sci_to_latex("-1.5e-3")
    '-1.5 \\\\times 10^{-3}'
    """
    mantissa, exponent = re.fullmatch(_SCI_NUMBER, number.strip()).groups()  # type: ignore[union-attr]
    return f"{mantissa} \\times 10^{{{exponent}}}"


def rewrite_boxed_sci(text: str) -> str:
    """Rewrite every ``\\boxed{}`` holding just an e-notation number (see :func:`sci_to_latex`).

    >>> rewrite_boxed_sci("so $\\\\boxed{8.7e8}$ and \\\\boxed{2e}")
    'so $\\\\boxed{8.7 \\\\times 10^{8}}$ and \\\\boxed{2e}'
    """
    return _SCI_BOXED.sub(lambda m: f"\\boxed{{{m[1]} \\times 10^{{{m[2]}}}}}", text)


def strip_ordinals(text: str) -> str:
    """Drop ordinal superscripts after a number, which otherwise parse as an empty power (``12^{}``).

    >>> strip_ordinals("\\\\boxed{12^{\\\\mathrm{th}} \\\\text{ grade}}, 2^{nd}, x^{2}")
    '\\\\boxed{12 \\\\text{ grade}}, 2, x^{2}'
    """
    return _ORDINAL_SUPERSCRIPT.sub("", text)


def choice_letter(text: str, gold: bool) -> str | None:
    """The multiple-choice letter of a bare gold (``(C)``, ``C``) or of a prediction starting with ``(C)``.

    >>> choice_letter("(C)", gold=True), choice_letter("\\\\text{(C) Plane}", gold=False), choice_letter("Cat", True)
    ('C', 'C', None)
    """
    match = (_CHOICE_GOLD.fullmatch if gold else _CHOICE_PRED.match)(text.strip("$"))
    return match[1] if match else None


def squash_latex(text: str) -> str:
    """The form in which two answers that sympy cannot parse are compared: no spacing, no braces around one symbol.

    >>> squash_latex("E_{1}, E_2\\, x^{2}")
    'E_1,E_2x^2'
    """
    return _BRACED_SCRIPT.sub(r"\1\2", _LATEX_SPACE.sub("", text))


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
    if sci_gold_value(gold) is not None:
        gold = sci_to_latex(gold.strip().strip("$"))
    return parse(wrap_gold(gold), _configs()["latex"], parsing_timeout=None)


def parse_pred(completion: str, pred_mode: PredMode) -> list[Any]:
    """Parse a completion's final answer as the mode prescribes (no timeout of its own: call inside a worker)."""
    from math_verify import parse

    text = rewrite_boxed_sci(answer_tail(completion))
    if pred_mode == "openrs":
        return parse(text, _configs()["openrs"], extraction_mode="first_match", parsing_timeout=None)
    return parse(strip_ordinals(text), _configs()["lighteval"], parsing_timeout=None)


def _without_percent(expr: Any) -> Any:
    """``X`` for a parsed ``X\\%`` (latex2sympy's ``X * UnevaluatedExpr(1/100)``), else None."""
    from sympy import Mul, Rational, UnevaluatedExpr

    if isinstance(expr, Mul) and len(expr.args) == 2 and expr.args[1] == UnevaluatedExpr(Rational(1, 100)):
        return expr.args[0]
    return None


def _with_percent_values(parsed: list[Any]) -> list[Any]:
    """The parsed answers followed by the bare value of each percentage among them."""
    bare = [_without_percent(x) for x in parsed]
    return parsed + [x for x in bare if x is not None]


def _real_value(expr: Any) -> float | None:
    """The real number a parsed answer (or the right side of ``x = ..``) stands for, or None."""
    from sympy import Eq, Expr

    if isinstance(expr, Eq):
        expr = expr.rhs
    if not isinstance(expr, Expr) or not expr.is_number:
        return None
    try:
        value = complex(expr.evalf())
    except (TypeError, ValueError):
        return None
    return value.real if value.imag == 0 else None


def _matches_value(pred: list[Any], value: float) -> bool | None:
    """Whether a numeric prediction equals ``value`` to ``_SCI_REL_TOL``; None if no prediction is a number."""
    numbers = [v for v in map(_real_value, pred) if v is not None]
    if not numbers:
        return None
    return any(math.isclose(v, value, rel_tol=_SCI_REL_TOL) for v in numbers)


def _verify_pairs(gold: list[Any], pred: list[Any], pred_mode: PredMode) -> tuple[bool, str | None]:
    """``verify`` over every gold x pred pair as math-verify does, but reporting an exception instead of hiding it.

    An exception in one pair scores that pair False (math-verify's own behaviour); it is reported only if no pair
    matched.
    """
    from math_verify import verify

    error = None
    if pred_mode == "lighteval":
        gold, pred = _with_percent_values(gold), _with_percent_values(pred)
    for g in gold:
        for p in pred:
            if pred_mode == "lighteval" and isinstance(g, str) and isinstance(p, str):
                if g.strip() and squash_latex(g) == squash_latex(p):
                    return True, None
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
        sci_value = sci_gold_value(gold) if gold_mode == "latex" else None
        numeric = _matches_value(pred_parsed, sci_value) if sci_value is not None else None
        if numeric is not None:
            # verify's absolute rounding cannot tell tiny values apart; the relative check decides for numbers.
            correct, error = numeric, None
        if not correct and pred_mode == "lighteval" and gold_mode == "latex":
            letter = choice_letter(gold, gold=True)
            if letter is not None and any(choice_letter(str(p), gold=False) == letter for p in pred_parsed):
                correct, error = True, None
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
