"""Side-channel counters (unparsed golds, timeouts, errors) from reward functions to :class:`RewardSet`.

A reward function keeps the plain ``(completions, **kwargs) -> list[float]`` signature and records events with
:func:`count`; :class:`RewardSet` wraps each call in :func:`collecting` and publishes the counts as
``rewards/<name>/<key>``. The counter lives in a ``ContextVar``, so concurrent calls in different threads never
mix their counts, and a function called outside a RewardSet simply records nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_CURRENT: ContextVar[Counter[str] | None] = ContextVar("openrs_reward_counters", default=None)


def count(key: str, n: int = 1) -> None:
    """Add ``n`` to counter ``key`` of the reward call in progress (a no-op outside :func:`collecting`).

    >>> with collecting() as counts:
    ...     count("timeouts", 2)
    ...     count("errors", 0)
    >>> dict(counts)
    {'timeouts': 2, 'errors': 0}
    """
    counts = _CURRENT.get()
    if counts is not None:
        counts[key] += n


@contextmanager
def collecting() -> Iterator[Counter[str]]:
    """Collect the :func:`count` calls made inside the ``with`` block into a fresh Counter."""
    counts: Counter[str] = Counter()
    token = _CURRENT.set(counts)
    try:
        yield counts
    finally:
        _CURRENT.reset(token)
