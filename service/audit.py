"""The audit stream: every ticket and card an agent sends, recorded before it reaches Sobot.

Producer side: `AuditLog.append` writes one `AuditRecord` to the stream `panel:audit` with an
idempotency key, atomically in one Lua script, so a retried click never makes a second entry.
Entries are flat string fields, as CONTRACT.md names them.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

import redis.asyncio as aioredis
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from .keys import Keys

AuditKind = Literal["ticket", "order_card", "goods_card"]
EVENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9_\-]{8,80}$")
# A retry arrives within seconds; a day covers any reconnect-and-resend by a panel.
IDEMPOTENCY_TTL_S = 86_400

_APPEND = """
local existing = redis.call('GET', KEYS[2])
if existing then return {existing, 1} end
local id
if ARGV[2] == 'maxlen' then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
elseif ARGV[2] == 'minid' then
  id = redis.call('XADD', KEYS[1], 'MINID', '~', ARGV[3], '*', unpack(ARGV, 4))
else
  id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
end
redis.call('SET', KEYS[2], id, 'EX', ARGV[1])
return {id, 0}
"""


class AuditRecord(BaseModel):
    """One entry of the stream, as CONTRACT.md defines it."""

    model_config = ConfigDict(frozen=True)

    kind: AuditKind
    id: str = Field(pattern=EVENT_ID_PATTERN.pattern)
    at: int
    surface: str
    agent: str
    partner_id: str = ""
    uid: str = ""
    cid: str = ""
    payload: str

    def fields(self) -> dict[str, str]:
        return {name: str(value) for name, value in self.model_dump().items()}


@dataclass(frozen=True, slots=True)
class Appended:
    entry_id: str
    duplicate: bool


class AuditLog:
    def __init__(
        self, redis: aioredis.Redis, keys: Keys, *, maxlen: int | None = None, max_age_s: int | None = None
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._maxlen = maxlen
        self._max_age_ms = max_age_s * 1000 if max_age_s else None
        self._script = redis.register_script(_APPEND)

    def _retention(self, now_ms: int) -> tuple[str, str]:
        # SPEC-independent policy: age (MINID) wins over length when both are configured.
        if self._max_age_ms is not None:
            return "minid", f"{max(0, now_ms - self._max_age_ms)}-0"
        if self._maxlen is not None:
            return "maxlen", str(self._maxlen)
        return "", ""

    async def append(self, record: AuditRecord) -> Appended:
        mode, bound = self._retention(record.at)
        flat = [item for pair in record.fields().items() for item in pair]
        entry_id, duplicate = await self._script(
            keys=[self._keys.audit_stream, self._keys.audit_idempotency(record.id)],
            args=[IDEMPOTENCY_TTL_S, mode, bound, *flat],
        )
        return Appended(entry_id=str(entry_id), duplicate=bool(int(duplicate)))


def setup(app: web.Application) -> None:
    """Open the audit producer with the app (after Redis)."""
    from .appkeys import AUDIT, KEYS, REDIS, SETTINGS

    async def audit_ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        app[AUDIT] = AuditLog(
            app[REDIS], app[KEYS], maxlen=settings.audit_maxlen, max_age_s=settings.audit_max_age
        )
        yield

    app.cleanup_ctx.append(audit_ctx)
