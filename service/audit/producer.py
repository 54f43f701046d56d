"""The audit stream: every ticket and card an agent sends, recorded before it reaches Sobot.

Producer side: `AuditLog.append` writes one `AuditRecord` to the stream `panel:audit` with an
idempotency key, atomically in one Lua script, so a retried click never makes a second entry. The key
remembers a digest of what it recorded (the payload and the claims that sent it): a retry with the same
content is answered with the stored entry, the same id with other content is refused
(`IdempotencyConflict`, HTTP 409) and nothing is added. Entries are flat string fields, as CONTRACT.md
names them. When Redis cannot be reached the record is
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
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..clock import now_ms
from ..redis import REDIS_DOWN, RedisClient, as_text
from ..redis.keys import Keys
from .batch import ScriptBatcher
from .record import FIELD_ORDER, AuditRecord
from .spool import Claim, Spool

log = logging.getLogger(__name__)

# How long a send's idempotency key is kept (PANEL_AUDIT_DEDUPE_TTL): a retry within it is answered from
# the stream, never recorded twice. It must also outlive the spool: a record spooled because its write
# timed out may already be in the stream, and only this key stops its replay from adding it twice. The
# replayer drains a spool within seconds of Redis answering (and at every start-up), so a day covers the
# outages a replica rides out; a record replayed later than that is logged as a possible duplicate.
IDEMPOTENCY_TTL_S = 86_400
REPLAY_BATCH = 100
DEAD_LETTER_MAXLEN = 100_000
# Ids of records this process spooled during an outage, with their digests: a retry meets its first try
# even while Redis cannot be asked (bounded: the oldest are forgotten first).
SPOOLED_IDS = 10_000

# KEYS: the stream, the id's key, and (spool replay only) the key for "this id with this other content".
# ARGV: ttl, digest, on_conflict ('refuse' | 'record'), then the record's values in FIELD_ORDER (the
# names are written into the script once, so a send packs and ships half the arguments).
# The id's key holds "<entry id> <digest>"; a key written before digests holds the entry id alone, and
# the entry itself is compared then. Replies {entry id, status, stored payload or false}: status 0 added,
# 1 duplicate (same content), 2 refused (same id, other content), 3 added as a conflicting replay.
_APPEND = """
local names = {@NAMES@}
local function entry_fields()
  local flat = {}
  for i, name in ipairs(names) do flat[2 * i - 1] = name; flat[2 * i] = ARGV[3 + i] end
  return flat
end
local function same_as_entry(entry_id)
  local found = redis.call('XRANGE', KEYS[1], entry_id, entry_id)
  if #found == 0 then return false end
  local stored, flat = {}, found[1][2]
  for i = 1, #flat, 2 do stored[flat[i]] = flat[i + 1] end
  local compared = {kind=1, surface=1, agent=1, partner_id=1, uid=1, cid=1, payload=1}
  for i, name in ipairs(names) do
    if compared[name] and stored[name] ~= ARGV[3 + i] then return false end
  end
  return true
end
local function stored_payload(entry_id)
  local found = redis.call('XRANGE', KEYS[1], entry_id, entry_id)
  if #found == 0 then return false end
  local flat = found[1][2]
  for i = 1, #flat, 2 do if flat[i] == 'payload' then return flat[i + 1] end end
  return false
end
local seen = redis.call('GET', KEYS[2])
if seen then
  local entry_id, digest = string.match(seen, '^(%S+) (%x+)$')
  local same
  if entry_id then same = (digest == ARGV[2]) else entry_id = seen; same = same_as_entry(seen) end
  if same then return {entry_id, 1, stored_payload(entry_id)} end
  if ARGV[3] ~= 'record' then return {entry_id, 2, false} end
  local other = redis.call('GET', KEYS[3])
  if other then return {other, 1, stored_payload(other)} end
  local id = redis.call('XADD', KEYS[1], '*', unpack(entry_fields()))
  redis.call('SET', KEYS[3], id, 'EX', ARGV[1])
  return {id, 3, false}
end
local id = redis.call('XADD', KEYS[1], '*', unpack(entry_fields()))
redis.call('SET', KEYS[2], id .. ' ' .. ARGV[2], 'EX', ARGV[1])
return {id, 0, false}
""".replace("@NAMES@", ", ".join(f"'{name}'" for name in FIELD_ORDER))


@dataclass(frozen=True, slots=True)
class Appended:
    """What became of one record.

    `spooled`: Redis was away, the record is on local disk and reaches the stream later (no entry ID yet).
    `duplicate`: the same send was recorded before; `stored_payload` is what the stream holds for it.
    `conflict`: the id was recorded before with other content; nothing was added (the send must be refused).
    `conflict_recorded`: a replayed record met such an entry and was added beside it (it had been sent).
    """

    entry_id: str
    duplicate: bool
    spooled: bool = False
    conflict: bool = False
    conflict_recorded: bool = False
    stored_payload: str | None = None


class IdempotencyConflict(Exception):
    """A send reuses an id that was recorded with other content."""

    def __init__(self, event_id: str, entry_id: str) -> None:
        super().__init__(f"id {event_id!r} was recorded as {entry_id or 'a spooled record'} with other content")
        self.event_id = event_id
        self.entry_id = entry_id


def _accepted_at(fields: dict[str, str]) -> int:
    value = fields.get("at", "")
    return int(value) if value.isdigit() else 0


class AuditLog:
    """The producer. With a `spool`, a send is accepted while Redis is away; without one it fails.

    Retention is not the producer's business: `sobot_panel.audit.retention.Retention` trims the stream
    in the background, never past what a consumer group has not acknowledged.
    """

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        *,
        spool: Spool | None = None,
        idempotency_ttl_s: int = IDEMPOTENCY_TTL_S,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._spool = spool
        self._ttl_s = idempotency_ttl_s
        self._script = redis.register_script(_APPEND)
        self._batcher = ScriptBatcher(redis, self._script)
        self._replay_lock = asyncio.Lock()
        self._spooling = False
        self._spooled: OrderedDict[str, str] = OrderedDict()

    @property
    def spool(self) -> Spool | None:
        return self._spool

    def _script_call(self, record: AuditRecord, *, replay: bool = False) -> tuple[list[str], list[str | int]]:
        digest = record.digest()
        keys = [self._keys.audit_stream, self._keys.audit_idempotency(record.id)]
        if replay:  # only a replay may record a conflicting id beside its first entry
            keys.append(self._keys.audit_idempotency(f"{record.id}:{digest[:16]}"))
        return keys, [self._ttl_s, digest, "record" if replay else "refuse", *record.values()]

    async def append(self, record: AuditRecord) -> Appended:
        """Record one send: in the stream, or (Redis away, spool configured) fsync'd to the spool.

        Raises `IdempotencyConflict` when the id was recorded with other content (nothing is added),
        the Redis error when there is no spool, and `SpoolFull`/`SpoolUnavailable` (HTTP 503) when the
        spool cannot keep it either: then the send must not go to Sobot.
        """
        try:
            keys, args = self._script_call(record)
            # Concurrent sends go out together, one pipelined round trip for all (`batch`); each waits for
            # Redis's reply to its own call.
            appended = _appended(await self._batcher.call(keys, args))
        except REDIS_DOWN as error:
            if self._spool is None:
                raise
            return await self._spool_one(record, error)
        if appended.conflict:
            raise IdempotencyConflict(record.id, appended.entry_id)
        return appended

    async def _spool_one(self, record: AuditRecord, error: Exception) -> Appended:
        # While Redis cannot be asked, this process still knows what it spooled itself: a retry is
        # answered as one, and other content under a spooled id is refused. (A retry that lands on
        # another replica during the outage is sorted out at replay: see `replay_spool`.)
        digest = record.digest()
        known = self._spooled.get(record.id)
        if known is not None:
            if known != digest:
                raise IdempotencyConflict(record.id, "")
            return Appended(entry_id="", duplicate=True, spooled=True)
        await self._to_spool([record], error)
        self._spooled[record.id] = digest
        while len(self._spooled) > SPOOLED_IDS:
            self._spooled.popitem(last=False)
        return Appended(entry_id="", duplicate=False, spooled=True)

    async def append_many(self, records: Sequence[AuditRecord]) -> list[Appended]:
        """Record several sends, pipelined in batches; what Redis did not take goes to the spool.

        A record whose id was recorded with other content comes back with `conflict` set (not added).
        """
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

    async def _push(self, records: Sequence[AuditRecord], *, replay: bool = False) -> list[Appended]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for record in records:
                keys, args = self._script_call(record, replay=replay)
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
            self._spooled.clear()
            claim = await self._claim(self._spool)
            try:
                records = self._valid(claim.merged(key=_accepted_at))
                added = duplicates = 0
                for start in range(0, len(records), REPLAY_BATCH):
                    batch = records[start : start + REPLAY_BATCH]
                    for record, result in zip(batch, await self._push(batch, replay=True), strict=True):
                        duplicates += result.duplicate
                        added += not result.duplicate
                        if result.conflict_recorded:
                            # It was sent to Sobot (the page was told "spooled"), so it is recorded all the
                            # same, beside the entry that holds its id with other content.
                            log.error(
                                "audit spool: record %s reuses an id recorded with other content; both were sent, "
                                "so it is recorded too, as entry %s", record.id, result.entry_id,
                            )  # fmt: skip
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
                record = AuditRecord.from_fields(item)
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
    entry_id, status, stored = reply
    status = int(status)
    return Appended(
        entry_id=as_text(entry_id),
        duplicate=status == 1,
        conflict=status == 2,
        conflict_recorded=status == 3,
        stored_payload=as_text(stored) if stored else None,
    )


__all__ = ["FIELD_ORDER", "Appended", "AuditLog", "AuditRecord", "IdempotencyConflict"]
