"""Reward specs from YAML, their validation, and :class:`RewardSet`, the weighted combination with logging stats.

A spec's ``name`` is a registry name or ``"package.module:function"``. User functions follow TRL/open-r1's
convention and work unchanged: ``f(completions, **kwargs) -> list[float | None]``, called with
``completions=`` (strings, or ``[[{"role": "assistant", "content": ...}]]`` with ``completion_format=
"messages"``), ``prompts=``, ``completion_ids=`` and every dataset column (e.g. ``solution=``) as keyword
arguments, plus the spec's ``kwargs``. ``None`` means "not applicable" and contributes 0 to the weighted sum,
as TRL's ``nansum`` does.

Faults in a reward function never reach the advantages (an ``inf`` reward would turn every weight into NaN):

============================================  ===================================  =============================
fault                                         scored as                            counter ``rewards/<name>/...``
============================================  ===================================  =============================
a value that is NaN or +-inf                  0.0                                  ``nonfinite``
a value that is not a number (``"1.0"``)      0.0                                  ``non_numeric``
the call raises                               skipped: the whole batch's values    ``call_errors``
                                              are "not applicable" (None)
the call returns the wrong number of values   skipped, as above                    ``wrong_length``
the call runs longer than ``spec.timeout``    skipped, as above (the call is       ``call_timeouts``
                                              left running in its helper thread)
============================================  ===================================  =============================

Every counter is logged for every function at every step (0 when nothing happened), and each fault is also
written to the ``openrs_pl.rewards`` log with the function's name. With ``strict: true`` on a spec the first
fault raises :class:`RewardFault` naming the function instead.
"""

from __future__ import annotations

import contextvars
import importlib
import inspect
import logging
import math
import numbers
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from openrs_pl.rewards.completion_text import as_messages
from openrs_pl.rewards.correctness import accuracy_reward, length_reward
from openrs_pl.rewards.cosine import cosine_reward
from openrs_pl.rewards.counters import collecting
from openrs_pl.rewards.formatting import format_reward, format_strict_reward, tag_count_reward
from openrs_pl.rewards.overlong import overlong_reward
from openrs_pl.rewards.repetition import repetition_reward

RewardFunc = Callable[..., Sequence[float | None]]

log = logging.getLogger("openrs_pl.rewards")

FAULT_COUNTERS = ("nonfinite", "non_numeric", "call_errors", "wrong_length", "call_timeouts")
"""The fault counters logged as ``rewards/<name>/<counter>`` for every reward function."""


class RewardFault(RuntimeError):
    """A reward function misbehaved and its spec asked for ``strict: true``."""


REWARD_REGISTRY: dict[str, RewardFunc] = {
    "accuracy": accuracy_reward,
    "format": format_reward,
    "format_strict": format_strict_reward,
    "tag_count": tag_count_reward,
    "cosine": cosine_reward,
    "repetition": repetition_reward,
    "length": length_reward,
    "overlong": overlong_reward,
}

# Arguments RewardSet supplies itself on every call; a spec may not bind them.
_CALL_ARGS = ("completions", "prompts", "completion_ids")


@dataclass
class RewardSpec:
    """One reward of a run: what to call, its weight, and keyword arguments bound to it.

    Attributes:
        name: a :data:`REWARD_REGISTRY` name or ``"package.module:function"``.
        weight: multiplier of this reward in the total.
        kwargs: keyword arguments bound to the function, e.g. ``{"max_len": 3584}``.
        strict: raise :class:`RewardFault` naming the function on its first fault (an exception, a wrong number
            of values, a NaN/inf or non-number value, a timeout) instead of scoring it and counting it.
        timeout: seconds one call may take; ``None`` = no limit. With a limit the call runs in a helper thread,
            and a call that overruns is abandoned (Python cannot kill a thread) and its batch skipped.
    """

    name: str
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    strict: bool = False
    timeout: float | None = None


def resolve_reward(name: str) -> RewardFunc:
    """The function a spec name refers to.

    Raises:
        ValueError: unknown registry name, or a ``module:function`` that cannot be imported or is not callable.

    >>> resolve_reward("format").__name__
    'format_reward'
    >>> resolve_reward("math:sqrt")(4.0)
    2.0
    """
    if ":" not in name:
        if name not in REWARD_REGISTRY:
            raise ValueError(
                f"unknown reward {name!r}; known: {', '.join(REWARD_REGISTRY)} (or 'package.module:function')"
            )
        return REWARD_REGISTRY[name]
    module_name, _, attr_path = name.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for attr in attr_path.split("."):
            obj = getattr(obj, attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load reward function {name!r}: {e}") from e
    if not callable(obj):
        raise ValueError(f"reward {name!r} is not callable")
    return obj


def _check_kwargs(spec: RewardSpec, func: RewardFunc) -> None:
    """Bound kwargs must be *named* parameters: a typo would otherwise vanish into the function's ``**kwargs``."""
    params = inspect.signature(func).parameters
    named = {
        p.name
        for p in params.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    for key in spec.kwargs:
        if key in _CALL_ARGS:
            raise ValueError(f"reward {spec.name!r}: kwarg {key!r} is supplied by the trainer and cannot be bound")
        if key not in named:
            raise ValueError(
                f"reward {spec.name!r} does not accept kwarg {key!r}; its parameters: {', '.join(sorted(named))}"
            )
    if not any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()) and "completions" not in named:
        raise ValueError(f"reward {spec.name!r} must accept a 'completions' argument")


def validate_reward_specs(specs: Sequence[RewardSpec]) -> None:
    """Check every spec before anything expensive happens (e.g. before a model is loaded).

    Raises:
        ValueError: naming the bad spec: no specs, unknown name, unimportable ``module:function``, a kwarg the
            function does not accept, or a non-finite weight.

    >>> validate_reward_specs([RewardSpec("cosine", 2.0, {"max_len": 3584})])
    >>> validate_reward_specs([RewardSpec("cosine", 2.0, {"max_lenn": 3584})])
    Traceback (most recent call last):
    ...
    ValueError: reward 'cosine' does not accept kwarg 'max_lenn'; its parameters: clip, completion_ids, ...
    """
    if not specs:
        raise ValueError("no reward functions configured")
    for spec in specs:
        if not math.isfinite(spec.weight):
            raise ValueError(f"reward {spec.name!r} has a non-finite weight {spec.weight}")
        if spec.timeout is not None and not spec.timeout > 0:
            raise ValueError(f"reward {spec.name!r}: timeout must be > 0 seconds or None, got {spec.timeout}")
        _check_kwargs(spec, resolve_reward(spec.name))


def _unique_names(specs: Sequence[RewardSpec], funcs: Sequence[RewardFunc]) -> tuple[str, ...]:
    """Log names: the registry name, or the user function's ``__name__``; repeats get ``_2``, ``_3``, ..."""
    names: list[str] = []
    for spec, func in zip(specs, funcs, strict=True):
        base = spec.name if ":" not in spec.name else getattr(func, "__name__", spec.name.rpartition(":")[2])
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return tuple(names)


@dataclass(frozen=True)
class RewardResult:
    """The rewards of one batch of N completions under R reward functions.

    Attributes:
        total: ``[N]`` weighted sum over functions (NaN values, i.e. None, contribute 0).
        per_func: ``[N, R]`` raw values, NaN where a function returned None.
        names: the R function names.
        stats: ``rewards/<name>/mean``, ``rewards/<name>/std`` (over non-NaN values), ``reward/mean``,
            ``reward/std``, and counters such as ``rewards/accuracy/gold_unparsed``, ``.../timeouts``, ``.../errors``.
    """

    total: torch.Tensor
    per_func: torch.Tensor
    names: tuple[str, ...]
    stats: dict[str, float]


def _mean_std(values: torch.Tensor) -> tuple[float, float]:
    """Mean and (unbiased) std of the non-NaN entries; NaN where there are too few."""
    valid = values[~values.isnan()]
    mean = valid.mean().item() if valid.numel() else math.nan
    std = valid.std().item() if valid.numel() > 1 else math.nan
    return mean, std


class RewardSet:
    """The configured reward functions with their weights, called once per batch of completions.

    >>> rs = RewardSet([RewardSpec("format", 1.0), RewardSpec("tag_count", 0.5)])
    >>> out = rs(["x\\n</think>\\ny", "x"], prompts=["p", "p"], columns={})
    >>> out.total.tolist(), out.stats["rewards/format/mean"]
    ([1.25, 0.0], 0.5)
    """

    def __init__(self, specs: Sequence[RewardSpec], completion_format: Literal["text", "messages"] = "text") -> None:
        if completion_format not in ("text", "messages"):
            raise ValueError(f"completion_format must be 'text' or 'messages', got {completion_format!r}")
        validate_reward_specs(specs)
        self.specs = list(specs)
        self.completion_format = completion_format
        self.funcs = [resolve_reward(s.name) for s in self.specs]
        self.names = _unique_names(self.specs, self.funcs)
        self.weights = torch.tensor([s.weight for s in self.specs], dtype=torch.float32)  # [R]

    def __call__(
        self,
        completions: list[str],
        prompts: list[str],
        columns: dict[str, list[Any]],
        completion_ids: list[list[int]] | None = None,
    ) -> RewardResult:
        """Score N completions.

        Args:
            completions: N completion texts.
            prompts: N prompts (passed on as ``prompts=``).
            columns: dataset columns, each a list of N values (one per completion), passed as keyword arguments.
            completion_ids: N token id lists (passed on; needed by ``length_unit="tokens"``).

        Returns:
            The per-function and weighted rewards with their logging stats.
        """
        n = len(completions)
        per_completion = {"prompts": prompts, **columns}
        if completion_ids is not None:
            per_completion["completion_ids"] = completion_ids
        for key, values in per_completion.items():
            if len(values) != n:
                raise ValueError(f"{key!r} has {len(values)} entries for {n} completions")
        handed: list[Any] = as_messages(completions) if self.completion_format == "messages" else list(completions)
        per_func = torch.full((n, len(self.funcs)), math.nan)  # [N, R]
        stats: dict[str, float] = {}
        for r, (name, spec, func) in enumerate(zip(self.names, self.specs, self.funcs, strict=True)):
            kwargs = {"completions": handed, "prompts": prompts, "completion_ids": completion_ids}
            with collecting() as counts:
                values = _checked_call(name, spec, func, n, kwargs | columns | spec.kwargs, counts)
            per_func[:, r] = torch.tensor(values, dtype=torch.float32)
            stats[f"rewards/{name}/mean"], stats[f"rewards/{name}/std"] = _mean_std(per_func[:, r])
            stats.update({f"rewards/{name}/{key}": float(counts[key]) for key in FAULT_COUNTERS})
            stats.update({f"rewards/{name}/{key}": float(c) for key, c in counts.items()})
        total = (per_func * self.weights).nansum(dim=1)  # [N]
        # Finite values times finite weights can still overflow float32 (1e38 * 2): never hand inf onwards.
        overflow = ~total.isfinite()
        if overflow.any():
            log.warning("weighted reward overflowed for %d completions: scored 0", int(overflow.sum()))
            total = total.masked_fill(overflow, 0.0)
        stats["reward/mean"], stats["reward/std"] = _mean_std(total)
        return RewardResult(total=total, per_func=per_func, names=self.names, stats=stats)


def _checked_call(
    name: str, spec: RewardSpec, func: RewardFunc, n: int, kwargs: dict[str, Any], counts: Any
) -> list[float]:
    """Call one reward function and turn its answer into N floats (NaN = not applicable), handling every fault.

    >>> from collections import Counter
    >>> counts = Counter()
    >>> f = lambda completions, **kw: [1, None, float("inf"), "1.0"]
    >>> _checked_call("f", RewardSpec("f"), f, 4, {"completions": list("abcd")}, counts)
    [1.0, nan, 0.0, 0.0]
    >>> counts["nonfinite"], counts["non_numeric"]
    (1, 1)
    """

    def fault(counter: str, message: str, k: int = 1) -> None:
        if spec.strict:
            raise RewardFault(f"reward {name!r}: {message} (strict: true; set strict: false to score and count it)")
        counts[counter] += k
        log.warning("reward %r: %s", name, message)

    try:
        values = _call_with_timeout(func, kwargs, spec.timeout)
    except TimeoutError:
        fault("call_timeouts", f"call took longer than timeout={spec.timeout} s; batch of {n} skipped")
        return [math.nan] * n
    except Exception as err:  # a user function may raise anything; it must not kill the step
        if isinstance(err, RewardFault):
            raise
        fault("call_errors", f"raised {type(err).__name__}: {err}; batch of {n} skipped")
        return [math.nan] * n
    try:
        got = len(values)
    except TypeError:
        got = -1
    if got != n:
        shown = got if got >= 0 else f"a {type(values).__name__}"
        fault("wrong_length", f"returned {shown} values for {n} completions; batch skipped")
        return [math.nan] * n
    out: list[float] = []
    bad: dict[str, list[str]] = {"non_numeric": [], "nonfinite": []}
    for i, v in enumerate(values):
        if v is None:
            out.append(math.nan)
            continue
        kind = "non_numeric" if not _is_number(v) else "nonfinite" if not math.isfinite(float(v)) else None
        if kind is None:
            out.append(float(v))
            continue
        if spec.strict:
            fault(kind, f"value {i} is {v!r} ({type(v).__name__}), not a finite number")
        bad[kind].append(f"{i}: {v!r}")
        out.append(0.0)
    for kind, where in bad.items():
        if where:
            fault(kind, f"{len(where)} of {n} values are not finite numbers, scored 0 (e.g. {where[0]})", len(where))
    return out


def _is_number(value: Any) -> bool:
    """Real numbers (bool, int, float, numpy scalars) and one-element tensors; never strings."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.is_complex()
    return isinstance(value, numbers.Real)


def _call_with_timeout(func: RewardFunc, kwargs: dict[str, Any], timeout: float | None) -> Any:
    """``func(**kwargs)``, in a daemon thread when a timeout is set (counters travel along via the context)."""
    if timeout is None:
        return func(**kwargs)
    result: dict[str, Any] = {}
    context = contextvars.copy_context()

    def run() -> None:
        try:
            result["value"] = context.run(func, **kwargs)
        except BaseException as err:  # re-raised in the caller's thread
            result["error"] = err

    thread = threading.Thread(target=run, name="reward-call", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError
    if "error" in result:
        raise result["error"]
    return result["value"]
