"""Session tokens: opaque (encrypted), authenticated, bounded in time, readable across a key rotation."""

from __future__ import annotations

import base64
import json
import re

import pytest
from sobot_panel.errors import TokenError
from sobot_panel.protocol.tokens import MAX_TOKEN_CHARS, PREFIX, SessionClaims, SessionTokens

KEY = b"k" * 32
TOKENS = SessionTokens(KEY)
CLAIMS = SessionClaims(
    surface="call", agent="agent@acme.cn", partner_id="C1001", uid="u-1", cid="c-1", mini_program=True,
    expires_ms=2_000, born_ms=1_000, session_id="0123456789abcdef",
    context=(("uphone", "13800000001"), ("uemail", "zhang.wei@example.cn"), ("params", '{"会员":"金卡"}')),
)  # fmt: skip


def test_round_trip() -> None:
    assert TOKENS.read(TOKENS.issue(CLAIMS), now_ms=1_500) == CLAIMS


def test_nothing_personal_is_readable_in_a_token() -> None:
    token = TOKENS.issue(CLAIMS)
    assert token.startswith(PREFIX) and re.fullmatch(r"v2\.[A-Za-z0-9_-]+", token)
    decoded = base64.urlsafe_b64decode(token[3:] + "=" * (-len(token[3:]) % 4))
    for secret in (b"agent@acme.cn", b"13800000001", b"zhang.wei", b"C1001", "金卡".encode()):
        assert secret not in decoded
    assert TOKENS.issue(CLAIMS) != token  # a fresh nonce each time: two tokens never show they are equal


def test_small_for_an_ordinary_panel_and_bounded_for_the_largest_query() -> None:
    assert len(TOKENS.issue(CLAIMS)) < 400
    huge = SessionClaims(surface="workbench", expires_ms=9, context=(("params", json.dumps({"备注": "长" * 5000})),))
    token = TOKENS.issue(huge)
    assert len(token) < MAX_TOKEN_CHARS and TOKENS.read(token, now_ms=1) == huge  # compressed, still readable


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda t: t[:-2] + ("AA" if t[-2:] != "AA" else "BB"), id="tag-tampered"),
        pytest.param(lambda t: t[:10] + ("A" if t[10] != "A" else "B") + t[11:], id="nonce-tampered"),
        pytest.param(lambda t: "v1." + t[3:], id="other-version"),
        pytest.param(lambda t: t[:40], id="truncated"),
        pytest.param(lambda t: "", id="empty"),
        pytest.param(lambda t: "v2.é" + t[3:], id="non-ascii"),
        pytest.param(lambda t: "v2.!!!!", id="not-base64"),
        pytest.param(lambda t: "v2." + "A" * MAX_TOKEN_CHARS, id="oversize"),
    ],
)
def test_any_change_is_refused(mutate: object) -> None:
    with pytest.raises(TokenError) as caught:
        TOKENS.read(mutate(TOKENS.issue(CLAIMS)), now_ms=1_500)  # type: ignore[operator]
    assert caught.value.code == "token_invalid" and caught.value.status == 401


def test_expired_and_foreign_tokens_are_refused() -> None:
    token = TOKENS.issue(CLAIMS)
    with pytest.raises(TokenError, match="token_expired"):
        TOKENS.read(token, now_ms=2_001)
    with pytest.raises(TokenError, match="token_invalid"):
        SessionTokens(b"another key").read(token, now_ms=1_500)


def test_a_rotated_key_still_reads_what_the_previous_one_issued() -> None:
    old = SessionTokens(b"old key")
    rotated = SessionTokens(b"new key", previous=[b"old key"])
    assert rotated.read(old.issue(CLAIMS), now_ms=1_500) == CLAIMS
    fresh = rotated.issue(CLAIMS)
    assert SessionTokens(b"new key").read(fresh, now_ms=1_500) == CLAIMS  # issued with the new key only
    with pytest.raises(TokenError):
        old.read(fresh, now_ms=1_500)


@pytest.mark.parametrize(
    "claims",
    [
        SessionClaims(surface="workbench"),
        SessionClaims(surface="call", agent="座席@acme.cn", partner_id='C"1\\', uid="u\u2028\u2029", cid="\x00\x1f\x7f",
                      mini_program=True, expires_ms=1764000000000, born_ms=1763999000000, session_id="0f" * 8,
                      context=(("email", "a+b@x.cn"), ("params", '{"vip":"是","x":"</script>"}')), tenant="acme"),
        SessionClaims(surface="wecom", agent="😀", context=tuple((f"k{i}", "v" * i) for i in range(40))),
    ],
)  # fmt: skip
def test_the_direct_encoding_is_the_json_encoders_and_round_trips(claims: SessionClaims) -> None:
    assert claims.encode() == claims.encode_with_json()
    assert SessionClaims.decode(claims.encode()) == claims
    tokens = SessionTokens(b"k")
    assert tokens.read(tokens.issue(claims), 0) == claims
