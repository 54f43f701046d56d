"""Framing and origin rules, and rate limits. Pure: no I/O, no clock reads. (Session tokens: `tokens`.)"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

# --- origins ---------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _origin_regex(pattern: str) -> re.Pattern[str]:
    """`https://*.sobot.com` matches any subdomain (not the bare domain); `http://127.0.0.1:*` any port."""
    scheme, _, rest = pattern.partition("://")
    host, colon, port = rest.partition(":")
    host_re = re.escape(host).replace(r"\*\.", r"(?:[a-z0-9-]+\.)+", 1) if host.startswith("*.") else re.escape(host)
    port_re = "" if not colon else r":\d{1,5}" if port == "*" else ":" + re.escape(port)
    return re.compile(f"^{re.escape(scheme)}://{host_re}{port_re}$", re.IGNORECASE)


def origin_allowed(origin: str | None, patterns: list[str]) -> bool:
    if not origin or origin == "null":
        return False
    return any(_origin_regex(pattern).match(origin) for pattern in patterns)


def frame_ancestors(patterns: list[str], *, allow_self: bool) -> str:
    sources = (["'self'"] if allow_self else []) + patterns
    return "frame-ancestors " + " ".join(sources)


def content_security_policy(patterns: list[str], *, allow_self: bool) -> str:
    return "; ".join(
        [
            "default-src 'self'",
            "img-src 'self' data: https: http:",
            "style-src 'self'",
            "script-src 'self'",
            "connect-src 'self' ws: wss:",
            "base-uri 'none'",
            "form-action 'self'",
            "object-src 'none'",
            frame_ancestors(patterns, allow_self=allow_self),
        ]
    )


# --- rate limits -----------------------------------------------------------------------------


@dataclass(slots=True)
class TokenBucket:
    """`rate` tokens a second up to `burst`; `take(now)` says whether one was available."""

    rate: float
    burst: float
    tokens: float = field(default=-1.0)
    updated: float = 0.0

    def take(self, now: float, cost: float = 1.0) -> bool:
        if self.tokens < 0:
            self.tokens, self.updated = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False
