"""What the request being handled is, for code that is not handed the request: its id and trace context.

The middleware sets these (contextvars, so every task a request starts inherits them); log lines carry the
request id, and calls to the enterprise's customer API pass `X-Request-Id` and `traceparent` on, so one
id joins a panel load, its log lines and the upstream's own logs.
"""

from __future__ import annotations

import re
from contextvars import ContextVar

REQUEST_ID: ContextVar[str] = ContextVar("panel_request_id", default="")
TRACEPARENT: ContextVar[str] = ContextVar("panel_traceparent", default="")
# W3C Trace Context: version-traceid-parentid-flags; anything else is not passed on.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def valid_traceparent(value: str) -> str:
    if not value:
        return ""
    value = value.strip().lower()
    return value if _TRACEPARENT.match(value) and value[3:35] != "0" * 32 else ""


def upstream_headers() -> dict[str, str]:
    """The headers that carry the current request's identity to a service we call."""
    headers = {}
    if request_id := REQUEST_ID.get():
        headers["X-Request-Id"] = request_id
    if traceparent := TRACEPARENT.get():
        headers["traceparent"] = traceparent
    return headers
