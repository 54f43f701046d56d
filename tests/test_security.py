"""Origin patterns, CSP frame-ancestors, session tokens and the token bucket."""

from __future__ import annotations

import pytest
from sobot_panel.protocol.security import (
    SessionClaims,
    TokenBucket,
    TokenError,
    content_security_policy,
    issue_token,
    origin_allowed,
    read_token,
)

DEFAULT = ["https://*.sobot.com", "https://*.soboten.com"]


@pytest.mark.parametrize(
    ("origin", "patterns", "allowed"),
    [
        pytest.param("https://www.sobot.com", DEFAULT, True, id="alibaba-cloud"),
        pytest.param("https://hk.soboten.com", DEFAULT, True, id="tencent-cloud"),
        pytest.param("https://a.b.sobot.com", DEFAULT, True, id="deep-subdomain"),
        pytest.param("https://sobot.com", DEFAULT, False, id="bare-domain-not-a-subdomain"),
        pytest.param("https://evilsobot.com", DEFAULT, False, id="suffix-trick"),
        pytest.param("https://www.sobot.com.evil.io", DEFAULT, False, id="prefix-trick"),
        pytest.param("http://www.sobot.com", DEFAULT, False, id="wrong-scheme"),
        pytest.param("https://www.sobot.com:8443", DEFAULT, False, id="unexpected-port"),
        pytest.param("null", DEFAULT, False, id="null-origin"),
        pytest.param(None, DEFAULT, False, id="no-origin"),
        pytest.param("http://127.0.0.1:5123", ["http://127.0.0.1:*"], True, id="any-port"),
        pytest.param("http://127.0.0.1", ["http://127.0.0.1:*"], False, id="any-port-needs-port"),
        pytest.param("https://crm.example.com", ["https://crm.example.com"], True, id="exact"),
        pytest.param("https://CRM.example.com", ["https://crm.example.com"], True, id="case-insensitive"),
    ],
)
def test_origin_allowed(origin: str | None, patterns: list[str], allowed: bool) -> None:
    assert origin_allowed(origin, patterns) is allowed


def test_csp_frame_ancestors_lists_origins_and_self_only_in_demo() -> None:
    production = content_security_policy(DEFAULT, allow_self=False)
    assert "frame-ancestors https://*.sobot.com https://*.soboten.com" in production
    assert "'self' https://*.sobot.com" not in production
    assert "frame-ancestors 'self' https://*.sobot.com" in content_security_policy(DEFAULT, allow_self=True)


KEY = b"k" * 32


def test_token_round_trip_and_binding() -> None:
    claims = SessionClaims(surface="workbench", agent="a@x.cn", partner_id="C1001", uid="u", cid="c",
                           mini_program=True, expires_ms=2_000, session="s-1")  # fmt: skip
    token = issue_token(KEY, claims)
    assert read_token(KEY, token, now_ms=1_000) == claims


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        pytest.param(lambda t: t[:-2] + ("AA" if t[-2:] != "AA" else "BB"), "token_invalid", id="mac-tampered"),
        pytest.param(lambda t: "e30" + t[t.index(".") :], "token_invalid", id="body-swapped"),
        pytest.param(lambda t: t.replace(".", ""), "token_invalid", id="no-dot"),
        pytest.param(lambda t: "", "token_invalid", id="empty"),
        pytest.param(lambda t: "é." + t, "token_invalid", id="non-ascii"),
    ],
)
def test_token_tampering_refused(mutate: object, code: str) -> None:
    token = issue_token(KEY, SessionClaims(surface="call", agent="a", expires_ms=10_000))
    with pytest.raises(TokenError) as caught:
        read_token(KEY, mutate(token), now_ms=1)  # type: ignore[operator]
    assert caught.value.code == code


def test_token_from_another_key_or_expired_refused() -> None:
    token = issue_token(KEY, SessionClaims(surface="call", agent="a", expires_ms=10_000))
    with pytest.raises(TokenError, match="token_invalid"):
        read_token(b"other", token, now_ms=1)
    with pytest.raises(TokenError, match="token_expired"):
        read_token(KEY, token, now_ms=10_001)


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=2, burst=3)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5) is True  # one token refilled in half a second
    assert bucket.take(0.5) is False
