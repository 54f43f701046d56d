"""The sign formulas of SPEC §3 and their verification. Pure functions: the clock is an argument.

Modes:
- secret (安全密钥 on): workbench `MD5(sysNum + secret + timestamp + partnerId)`, the other Sobot
  surfaces `MD5(sysNum + secret + timestamp + uphone + uemail)`; an empty field adds nothing.
- legacy (no secret configured): `md5(sysNum + email)`. It never changes for an agent, so it is
  accepted only when the deployment has no secret at all (and start-up warns about it).
- WeCom: `MD5(corpId + userId + partnerId + serviceId + serviceRoleId + wxUnionId + wxBuildUnionId +
  tel + serviceTel + timeStamp [+ secret])`, missing fields as empty strings.

Signs are compared case-insensitively in constant time. A timestamp outside `max_age_s` in either
direction is a replay (or a badly wrong clock) and is refused before the sign is compared, so an
admin testing an old URL reads "expired 17 min ago" rather than a bare mismatch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from ..errors import Code, SignError
from .surfaces import Surface

WECOM_SIGNED = ("corpId", "userId", "partnerId", "serviceId", "serviceRoleId", "wxUnionId", "wxBuildUnionId",
                "tel", "serviceTel", "timeStamp")  # fmt: skip
# WeCom's timeStamp below this is read as seconds (SPEC §2 says ms; the gateway's own times are seconds).
_SECONDS_LIMIT = 100_000_000_000


class SignMode(StrEnum):
    SECRET = "secret"
    SECRET_PREVIOUS = "secret-previous"  # verified with PANEL_SECRET_PREVIOUS during a key rotation
    LEGACY = "legacy"
    WECOM = "wecom"
    WECOM_SECRET = "wecom-secret"


@dataclass(frozen=True, slots=True)
class SignPolicy:
    sys_num: str
    secret: str | None
    wecom_secret: str | None
    max_age_s: int = 300
    previous_secret: str | None = None  # Sobot's old key, accepted while a rotation is under way


def md5_hex(*parts: str) -> str:
    return hashlib.md5("".join(parts).encode("utf-8"), usedforsecurity=False).hexdigest()


def timestamp_field(surface: Surface) -> str:
    return "timeStamp" if surface is Surface.WECOM else "timestamp"


def sign_mode(surface: Surface, policy: SignPolicy) -> SignMode:
    if surface is Surface.WECOM:
        return SignMode.WECOM_SECRET if policy.wecom_secret else SignMode.WECOM
    return SignMode.SECRET if policy.secret else SignMode.LEGACY


def expected_sign(surface: Surface, fields: Mapping[str, str], policy: SignPolicy) -> str:
    """The lower-case hex sign Sobot computes for these fields under this policy."""
    get = fields.get
    mode = sign_mode(surface, policy)
    if mode is SignMode.LEGACY:
        return md5_hex(policy.sys_num, get("email", ""))
    if mode is SignMode.SECRET:
        assert policy.secret is not None
        if surface is Surface.WORKBENCH:
            return md5_hex(policy.sys_num, policy.secret, get("timestamp", ""), get("partnerId", ""))
        return md5_hex(policy.sys_num, policy.secret, get("timestamp", ""), get("uphone", ""), get("uemail", ""))
    tail = policy.wecom_secret if mode is SignMode.WECOM_SECRET and policy.wecom_secret else ""
    return md5_hex(*(get(name, "") for name in WECOM_SIGNED), tail)


def signed_at_ms(surface: Surface, raw: str) -> int:
    value = int(raw)
    if surface is Surface.WECOM and value < _SECONDS_LIMIT:
        return value * 1000
    return value


def verify_sign(surface: Surface, fields: Mapping[str, str], policy: SignPolicy, now_ms: int) -> SignMode:
    """The mode the fields verified under, or SignError naming what failed.

    `fields` are the canonical raw strings of a parsed context (timestamps already known to be digits).
    """
    sign = fields.get("sign", "")
    if not sign:
        raise SignError(Code.SIGN_MISSING, field="sign")
    mode = sign_mode(surface, policy)
    if mode is not SignMode.LEGACY:
        name = timestamp_field(surface)
        raw = fields.get(name, "")
        if not raw:
            raise SignError(Code.TIMESTAMP_MISSING, field=name)
        age_ms = now_ms - signed_at_ms(surface, raw)
        limit_ms = policy.max_age_s * 1000
        if age_ms > limit_ms:
            raise SignError(Code.SIGN_EXPIRED, field=name, minutes=age_ms // 60_000, seconds=age_ms // 1000)
        if -age_ms > limit_ms:
            raise SignError(Code.SIGN_FUTURE, field=name, minutes=-age_ms // 60_000, seconds=-age_ms // 1000)
    given = sign.strip().lower().encode("utf-8")
    if hmac.compare_digest(expected_sign(surface, fields, policy).encode("ascii"), given):
        return mode
    if mode is SignMode.SECRET and policy.previous_secret:
        previous = dataclasses.replace(policy, secret=policy.previous_secret, previous_secret=None)
        if hmac.compare_digest(expected_sign(surface, fields, previous).encode("ascii"), given):
            return SignMode.SECRET_PREVIOUS
    raise SignError(Code.SIGN_MISMATCH, field="sign")


def sign_fields(surface: Surface, fields: Mapping[str, str], policy: SignPolicy, now_ms: int) -> dict[str, str]:
    """The fields Sobot would send: a fresh timestamp and the matching sign (for the CLI, simulator, tests)."""
    signed = {name: value for name, value in fields.items() if name != "sign"}
    signed[timestamp_field(surface)] = str(now_ms)
    signed["sign"] = expected_sign(surface, signed, policy)
    return signed
