"""The wall clock in milliseconds, as Sobot's timestamps and the audit record's `at` count it."""

from __future__ import annotations

import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000
