"""The audit stream: every ticket and card an agent sends, recorded before it reaches Sobot.

Producer side: `AuditLog.append` writes one `AuditRecord` to the stream `panel:audit` with an
idempotency key, atomically in one Lua script, so a retried click never makes a second entry.
Entries are flat string fields, as CONTRACT.md names them. When Redis cannot be reached the record is
fsync'd to the local spool (`sobot_panel.audit.spool`) instead, and a background replayer pushes it into the
stream once Redis answers: the record keeps its `id` and `at`, its stream ID is the time of the replay,
and the idempotency key makes the replay safe to repeat.

The consumer side (consumer groups, exports, stream statistics) is `sobot_panel.audit.reader`.

Redis Cluster: the Lua script touches the stream and the idempotency key, and the dead-letter move
touches both streams in one MULTI, so those keys share a hash slot: on a cluster `sobot_panel.redis.keys` puts
the tenant's hash tag in them (`{panel}:audit`, `{panel}:audit:seen:<id>`, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..clock import now_ms
from ..protocol.send import EVENT_ID_PATTERN, SendKind
from ..redis import REDIS_DOWN, RedisClient, as_text
from ..redis.keys import Keys
from .spool import Claim, Spool

log = logging.getLogger(__name__)

# The idempotency key must outlive the spool: a record spooled because its write timed out may
# already be in the stream, and only this key stops its replay from adding it twice. A spool lives
# as long as Redis stays unreachable (the replayer drains it within seconds of Redis answering, and
# at every start-up), so a week covers any outage we would ride out; a record replayed later than
# that is logged as a possible duplicate.
IDEMPOTENCY_TTL_S = 7 * 86_400
REPLAY_BATCH = 100
DEAD_LETTER_MAXLEN = 100_000

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

    kind: SendKind
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


FIELD_ORDER: tuple[str, ...] = tuple(AuditRecord.model_fields)


@dataclass(frozen=True, slots=True)
class Appended:
    """`spooled`: Redis was away, the record is on local disk and reaches the stream later (no entry ID yet)."""

    entry_id: str
    duplicate: bool
    spooled: bool = False


def _accepted_at(fields: dict[str, str]) -> int:
    value = fields.get("at", "")
    return int(value) if value.isdigit() else 0


class AuditLog:
    """The producer. With a `spool`, a send is accepted while Redis is away; without one it fails."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        *,
        maxlen: int | None = None,
        max_age_s: int | None = None,
        spool: Spool | None = None,
        idempotency_ttl_s: int = IDEMPOTENCY_TTL_S,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._maxlen = maxlen
        self._max_age_ms = max_age_s * 1000 if max_age_s else None
        self._spool = spool
        self._ttl_s = idempotency_ttl_s
        self._script = redis.register_script(_APPEND)
        self._replay_lock = asyncio.Lock()
        self._spooling = False

    @property
    def spool(self) -> Spool | None:
        return self._spool

    def _retention(self, now: int) -> tuple[str, str]:
        # SPEC-independent policy: age (MINID) wins over length when both are configured.
        if self._max_age_ms is not None:
            return "minid", f"{max(0, now - self._max_age_ms)}-0"
        if self._maxlen is not None:
            return "maxlen", str(self._maxlen)
        return "", ""

    def _script_call(self, record: AuditRecord, now: int) -> tuple[list[str], list[str | int]]:
        mode, bound = self._retention(now)
        flat = [item for pair in record.fields().items() for item in pair]
        keys = [self._keys.audit_stream, self._keys.audit_idempotency(record.id)]
        return keys, [self._ttl_s, mode, bound, *flat]

    async def append(self, record: AuditRecord) -> Appended:
        """Record one send: in the stream, or (Redis away, spool configured) fsync'd to the spool.

        Raises the Redis error when there is no spool, and `SpoolFull`/`SpoolUnavailable` (HTTP 503)
        when the spool cannot keep it either: then the send must not go to Sobot.
        """
        try:
            keys, args = self._script_call(record, now_ms())
            return _appended(await self._script(keys=keys, args=args))
        except REDIS_DOWN as error:
            if self._spool is None:
                raise
            await self._to_spool([record], error)
            return Appended(entry_id="", duplicate=False, spooled=True)

    async def append_many(self, records: Sequence[AuditRecord]) -> list[Appended]:
        """Record several sends, pipelined in batches; what Redis did not take goes to the spool."""
        results: list[Appended] = []
        for start in range(0, len(records), REPLAY_BATCH):
            try:
                results.extend(await self._push(records[start : start + REPLAY_BATCH]))
            except REDIS_DOWN as error:
                if self._spool is None:
                    raise
                rest = records[start:]
                await self._to_spool(rest, error)
                results.extend(Appended(entry_id="", duplicate=False, spooled=True) for _ in rest)
                break
        return results

    async def _push(self, records: Sequence[AuditRecord]) -> list[Appended]:
        now = now_ms()
        async with self._redis.pipeline(transaction=False) as pipe:
            for record in records:
                keys, args = self._script_call(record, now)
                await self._script(keys=keys, args=args, client=pipe)  # type: ignore[arg-type]  # a pipeline queues the script (redis-py types say a client)
            replies = await pipe.execute()
        return [_appended(reply) for reply in replies]

    async def _to_spool(self, records: Sequence[AuditRecord], error: Exception) -> None:
        assert self._spool is not None
        if not self._spooling:
            log.warning("audit: Redis unavailable (%s: %s); spooling records to local disk", type(error).__name__,
                        error)  # fmt: skip
        self._spooling = True
        await asyncio.to_thread(self._spool.append_many, [record.fields() for record in records])

    async def replay_spool(self) -> int:
        """Push every spooled record this host holds (dead processes' files too) into the stream.

        Records go in acceptance order (`at`), keep their `id` and `at`, and are never doubled: the
        idempotency key answers "duplicate" for any that already made it. A file is deleted only after
        all of its records are confirmed. Returns how many records were handled; raises on Redis errors
        (the files then stay for the next attempt).
        """
        if self._spool is None:
            return 0
        async with self._replay_lock:
            claim = await self._claim(self._spool)
            try:
                records = self._valid(claim.merged(key=_accepted_at))
                added = duplicates = 0
                for start in range(0, len(records), REPLAY_BATCH):
                    for result in await self._push(records[start : start + REPLAY_BATCH]):
                        duplicates += result.duplicate
                        added += not result.duplicate
                claim.commit()
            finally:
                claim.release()
        if claim.files:
            log.info("audit spool replayed: %d added, %d already in the stream, %d torn or corrupt lines skipped",
                     added, duplicates, claim.skipped)  # fmt: skip
            self._spooling = False
        return added + duplicates

    @staticmethod
    async def _claim(spool: Spool) -> Claim:
        # Claiming runs in a thread and locks files: if we are cancelled meanwhile, the thread still
        # finishes, so release what it took rather than keep those files locked until the process ends.
        task = asyncio.ensure_future(asyncio.to_thread(spool.claim))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_release_claim)
            raise

    def _valid(self, items: Iterable[dict[str, str]]) -> list[AuditRecord]:
        records = []
        oldest_safe = now_ms() - self._ttl_s * 1000
        for item in items:
            try:
                record = AuditRecord.model_validate(item)
            except ValidationError as error:
                log.error("audit spool: dropped an invalid record %r (%s)", item, error.errors()[0]["msg"])
                continue
            if record.at < oldest_safe:
                log.warning(
                    "audit spool: record %s was accepted more than %d s ago (the idempotency window); "
                    "if its first write did land, the stream may now hold it twice",
                    record.id,
                    self._ttl_s,
                )
            records.append(record)
        return records

    async def run_replayer(self, stop: asyncio.Event, *, interval_s: float = 1.0) -> None:
        """Until `stop` is set: whenever the spool holds files and Redis answers, replay them."""
        if self._spool is None:
            return
        failing = False
        while not stop.is_set():
            try:
                if await asyncio.to_thread(self._spool.has_files):
                    await self._redis.ping()
                    await self.replay_spool()
                failing = False
            except REDIS_DOWN as error:
                if not failing:
                    log.warning("audit spool: Redis still unavailable (%s); retrying every %.0fs", error, interval_s)
                failing = True
            except Exception:
                log.exception("audit spool replay failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)


def _release_claim(task: asyncio.Future[Claim]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().release()


def _appended(reply: Any) -> Appended:
    entry_id, duplicate = reply
    return Appended(entry_id=as_text(entry_id), duplicate=bool(int(duplicate)))
