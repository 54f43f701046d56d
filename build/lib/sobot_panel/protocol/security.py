"""Framing and origin rules, websocket/session tokens and rate limits. Pure: no I/O, no clock reads."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache

from ..errors import Code, PanelError


class TokenError(PanelError):
    status = 401


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


# --- session tokens --------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class SessionClaims:
    """What a page's token vouches for: who the agent is, where, and which customer was verified."""

    surface: str
    agent: str = ""
    partner_id: str = ""
    uid: str = ""
    cid: str = ""
    mini_program: bool = False
    expires_ms: int = 0
    # The verified query fields (sign removed), so any replica can re-render this panel after a reconnect.
    context: tuple[tuple[str, str], ...] = ()
    # One page load's session, kept through pushes and renewals: what the per-session socket cap counts.
    session: str = ""

    def to_json(self) -> dict[str, object]:
        return {"s": self.surface, "a": self.agent, "p": self.partner_id, "u": self.uid, "c": self.cid,
                "m": int(self.mini_program), "e": self.expires_ms, "x": dict(self.context),
                "i": self.session}  # fmt: skip


def issue_token(key: bytes, claims: SessionClaims) -> str:
    body = _b64(json.dumps(claims.to_json(), separators=(",", ":"), ensure_ascii=False).encode())
    mac = _b64(hmac.new(key, body.encode("ascii"), hashlib.sha256).digest())
    return f"{body}.{mac}"


def read_token(key: bytes, token: str, now_ms: int) -> SessionClaims:
    """The claims of a token this deployment issued and that has not expired, else TokenError."""
    body, dot, mac = token.partition(".")
    if not dot or len(token) > 4096:
        raise TokenError(Code.TOKEN_INVALID)
    expected = _b64(hmac.new(key, body.encode("ascii", "replace"), hashlib.sha256).digest())
    if not hmac.compare_digest(expected.encode(), mac.encode("ascii", "replace")):
        raise TokenError(Code.TOKEN_INVALID)
    try:
        raw = json.loads(_unb64(body))
        claims = SessionClaims(
            surface=str(raw["s"]), agent=str(raw["a"]), partner_id=str(raw["p"]), uid=str(raw["u"]),
            cid=str(raw["c"]), mini_program=bool(raw.get("m")), expires_ms=int(raw["e"]),
            context=tuple((str(k), str(v)) for k, v in dict(raw.get("x") or {}).items()),
            session=str(raw.get("i") or ""),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError) as error:
        raise TokenError(Code.TOKEN_INVALID) from error
    if claims.expires_ms < now_ms:
        raise TokenError(Code.TOKEN_EXPIRED)
    return claims


class SessionTokens:
    """Issues and reads this deployment's session tokens with one key (decoded once, at start-up)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def issue(self, claims: SessionClaims) -> str:
        return issue_token(self._key, claims)

    def read(self, token: str, now_ms: int) -> SessionClaims:
        return read_token(self._key, token, now_ms)


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
