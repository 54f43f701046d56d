"""JSON from outside, parsed within limits: size first (cheap), then a C parser whose own recursion limit
stops pathological nesting, then our depth limit. Python's `json` module raises RecursionError (a 500 with a
traceback) on `[` x 100000; this never does. Pure: no I/O."""

from __future__ import annotations

from typing import Any

import pydantic_core

MAX_DEPTH = 32  # real payloads (params, ivrPath, cards, tickets) nest 5 levels at most


class JsonRefused(ValueError):
    """Not JSON, or JSON beyond a limit; `reason` is "size", "depth" or "syntax"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed value (a scalar is 0)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level + 1)
            stack.extend((child, level + 1) for child in item if isinstance(child, dict | list))
    return deepest


def _brackets(data: str | bytes) -> int:
    if isinstance(data, bytes):
        return data.count(b"[") + data.count(b"{")
    return data.count("[") + data.count("{")


def load(data: str | bytes, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """The value in `data`, or JsonRefused saying which limit (or the syntax) it broke."""
    if len(data) > max_bytes:
        raise JsonRefused("size")
    try:
        value = pydantic_core.from_json(data)
    except ValueError as error:
        raise JsonRefused("depth" if "recursion limit" in str(error) else "syntax") from None
    # Nesting deeper than `max_depth` needs more than `max_depth` brackets: most bodies are told apart by
    # counting them in C, and only the rest are walked.
    if _brackets(data) > max_depth and depth(value) > max_depth:
        raise JsonRefused("depth")
    return value
