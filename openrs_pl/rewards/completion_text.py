"""Completions arrive as plain strings or, open-r1 style, as chat messages; built-in rewards accept both."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def completion_text(completion: str | Sequence[dict[str, Any]]) -> str:
    """The text of one completion: the string itself, or the last message's ``content``.

    >>> completion_text("abc")
    'abc'
    >>> completion_text([{"role": "assistant", "content": "abc"}])
    'abc'
    """
    if isinstance(completion, str):
        return completion
    return str(completion[-1]["content"])


def completion_texts(completions: Sequence[str | Sequence[dict[str, Any]]]) -> list[str]:
    """:func:`completion_text` of every completion."""
    return [completion_text(c) for c in completions]


def as_messages(texts: Sequence[str]) -> list[list[dict[str, str]]]:
    """Completions in open-r1's conversational form, ``[[{"role": "assistant", "content": text}], ...]``.

    >>> as_messages(["hi"])
    [[{'role': 'assistant', 'content': 'hi'}]]
    """
    return [[{"role": "assistant", "content": t}] for t in texts]
