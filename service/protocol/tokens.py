"""Session tokens: what a panel's page may do after Sobot's signed URL, small, opaque and bounded in time.

A token carries the verified context of the panel it was issued to, so any replica can serve it (sends,
relays, a resync after a reconnect) even while Redis is away; that context holds the agent's email and the
customer's phone and email, so the token is encrypted, not merely signed: AES-256-GCM-SIV (a C-level AEAD
from the `cryptography` package) over a compact JSON array, compressed when long. Nothing in it is readable
without `PANEL_SESSION_KEY`, and any change to it fails authentication. GCM-SIV rather than plain GCM: its
random nonces stay safe however many tokens one key issues (a busy fleet issues billions a year; a repeated
nonce would only show that two tokens hold the same claims).

    v2.<base64url(nonce 12 bytes | ciphertext | tag 16 bytes)>

Lifetime: each token expires `ttl` after it was issued and is renewed while the panel is open, but never
past `born + max_age`, where `born` is when Sobot's sign was last verified for this session (a page load
or a relayed `selected`). After that only a freshly signed context opens a new session.

Rotation: tokens are issued with the current key and read with the current key, then the previous one
(`PANEL_SESSION_KEY_PREVIOUS`), so replicas can change keys without ending every panel at once.
Pure: no I/O; the clock and the random nonce are the only inputs besides the claims.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import Code, TokenError

PREFIX = "v2."
NONCE_BYTES = 12
# Larger than any token the query limits allow (16 KiB of query, base64-expanded); refused before decoding.
MAX_TOKEN_CHARS = 64 * 1024
_AAD = b"sobot-panel session"
_PLAIN, _DEFLATED = b"j", b"z"
_COMPRESS_OVER = 512  # bytes of JSON; below it zlib saves little and costs a few microseconds
# Built once: json.dumps with arguments builds a new encoder per call, a fifth of minting a token.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_json_string = json.encoder.encode_basestring  # what _ENCODER writes for a str (ensure_ascii off)
_URLSAFE = bytes.maketrans(b"+/", b"-_")


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
    born_ms: int = 0  # when Sobot's sign was last verified for this session
    session_id: str = ""  # stays the same across renewals and relays of one panel
    tenant: str = ""  # the company the session belongs to ("" for the single-company settings)

    def encode(self) -> bytes:
        """The compact JSON array, written directly: what `_ENCODER` gives for it, without its per-call setup
        (the token is minted on every page; a table test holds the two equal)."""
        s = _json_string
        context = ",".join([s(item) for pair in self.context for item in pair])
        return (f"[{s(self.surface)},{s(self.agent)},{s(self.partner_id)},{s(self.uid)},{s(self.cid)},"
                f"{int(self.mini_program)},{int(self.expires_ms)},{int(self.born_ms)},{s(self.session_id)},"
                f"[{context}],{s(self.tenant)}]").encode()  # fmt: skip

    def encode_with_json(self) -> bytes:
        """The reference encoding (`encode` must equal it)."""
        return _ENCODER.encode(
            [self.surface, self.agent, self.partner_id, self.uid, self.cid, int(self.mini_program), self.expires_ms,
             self.born_ms, self.session_id, [item for pair in self.context for item in pair], self.tenant],
        ).encode()  # fmt: skip

    @classmethod
    def decode(cls, data: bytes) -> SessionClaims:
        raw = json.loads(data)
        flat = [str(item) for item in raw[9]]
        return cls(
            surface=str(raw[0]), agent=str(raw[1]), partner_id=str(raw[2]), uid=str(raw[3]), cid=str(raw[4]),
            mini_program=bool(raw[5]), expires_ms=int(raw[6]), born_ms=int(raw[7]), session_id=str(raw[8]),
            context=tuple(zip(flat[::2], flat[1::2], strict=True)), tenant=str(raw[10]),
        )  # fmt: skip


def _aead(key: bytes) -> AESGCMSIV:
    """A 256-bit AES-GCM key derived from the configured session key (any length, any text)."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"sobot-panel session token v2").derive(key)
    return AESGCMSIV(derived)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionTokens:
    """Issues tokens with the current key and reads them with the current or the previous keys."""

    def __init__(self, key: bytes, previous: Sequence[bytes] = ()) -> None:
        self._issuer = _aead(key)
        self._readers = [self._issuer, *(_aead(old) for old in previous)]

    def issue(self, claims: SessionClaims) -> str:
        plain = claims.encode()
        body = _DEFLATED + zlib.compress(plain, 6) if len(plain) > _COMPRESS_OVER else _PLAIN + plain
        nonce = os.urandom(NONCE_BYTES)
        sealed = binascii.b2a_base64(nonce + self._issuer.encrypt(nonce, body, _AAD), newline=False)
        return PREFIX + sealed.translate(_URLSAFE).rstrip(b"=").decode()  # what _b64() gives, a step shorter

    def read(self, token: str, now_ms: int) -> SessionClaims:
        """The claims of a token this deployment issued and that has not expired, else TokenError."""
        if not token.startswith(PREFIX) or len(token) > MAX_TOKEN_CHARS:
            raise TokenError(Code.TOKEN_INVALID)
        try:
            sealed = _unb64(token[len(PREFIX) :])
        except (binascii.Error, ValueError):
            raise TokenError(Code.TOKEN_INVALID) from None
        nonce, box = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
        for reader in self._readers:
            try:
                body = reader.decrypt(nonce, box, _AAD)
                break
            except (InvalidTag, ValueError):
                continue
        else:
            raise TokenError(Code.TOKEN_INVALID)
        try:
            plain = zlib.decompress(body[1:]) if body[:1] == _DEFLATED else body[1:]
            claims = SessionClaims.decode(plain)
        except (ValueError, KeyError, TypeError, IndexError, zlib.error) as error:
            raise TokenError(Code.TOKEN_INVALID) from error  # authentic but unreadable: a format this build lacks
        if claims.expires_ms < now_ms:
            raise TokenError(Code.TOKEN_EXPIRED)
        return claims
