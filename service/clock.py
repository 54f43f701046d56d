"""Time as Sobot and its agents count it: the wall clock in milliseconds (Sobot's timestamps, the audit
record's `at`) and China Standard Time for what agents and operators read."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

# Asia/Shanghai has been UTC+8 all year since 1991; a fixed offset needs no tz database.
CHINA_TZ = timezone(timedelta(hours=8), "CST")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def china_time(ms: int, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """A millisecond timestamp as China time; empty for none (0 or negative)."""
    return datetime.fromtimestamp(ms / 1000, CHINA_TZ).strftime(fmt) if ms > 0 else ""
