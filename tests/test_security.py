"""Origin patterns, CSP frame-ancestors and the token bucket."""

from __future__ import annotations

import pytest
from sobot_panel.protocol.security import TokenBucket, content_security_policy, origin_allowed

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


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=2, burst=3)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5) is True  # one token refilled in half a second
    assert bucket.take(0.5) is False
