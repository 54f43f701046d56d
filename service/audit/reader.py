"""Reading the audit stream: consumer groups, exports by ID range, and the stream's statistics.

`AuditReader` reads through a consumer group (at-least-once: an entry is delivered again until it is
acked), takes over entries that a dead consumer left pending (XAUTOCLAIM), and moves an entry that
keeps failing to the dead-letter stream. `iter_range` pages through the stream by ID, without a group,
for exports. `update_metrics` refreshes the audit gauges for /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypedDict

from redis.exceptions import ResponseError

from ..clock import CHINA_TZ, now_ms
from ..redis import REDIS_DOWN, RedisClient, as_text
from ..redis.keys import Keys
from .producer import DEAD_LETTER_MAXLEN
from .record import AuditRecord
from .retention import group_positions, parse_id
from .spool import Spool

if TYPE_CHECKING:
    from ..observability import Metrics

log = logging.getLogger(__name__)


# --- consumers -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry: its stream ID and its flat string fields."""

    entry_id: str
    fields: dict[str, str]

    @property
    def record(self) -> AuditRecord:
        """The fields as an `AuditRecord` (raises `ValidationError` for an entry some other writer made)."""
        return AuditRecord.from_fields(self.fields)


def _entry(raw_id: Any, raw_fields: Any) -> Entry:
    return Entry(as_text(raw_id), {as_text(k): as_text(v) for k, v in (raw_fields or {}).items()})


class AuditReader:
    """One consumer of a consumer group: at-least-once delivery, stale entries claimed, poison entries parked.

    `claim_idle_ms`: an entry delivered to any consumer and not acked for this long is taken over.
    `dead_after`: an entry delivered this many times without an ack goes to the dead-letter stream
    (with `dead_reason`, `original_id`, `deliveries`, `group`) and is acked here instead.
    """

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        group: str,
        consumer: str,
        *,
        claim_idle_ms: int = 60_000,
        dead_after: int = 5,
    ) -> None:
        self._redis = redis
        self._stream = keys.audit_stream
        self._dead = keys.audit_dead_letter
        self.group = group
        self.consumer = consumer
        self.claim_idle_ms = claim_idle_ms
        self.dead_after = dead_after
        self._start = "$"
        self._cursor = "0-0"

    async def ensure_group(self, start: str = "$") -> bool:
        """Create the group (and the stream) if missing: `start` "$" = new entries only, "0" = everything.

        Returns False when the group already existed (its position is left alone).
        """
        self._start = start
        try:
            await self._redis.xgroup_create(self._stream, self.group, id=start, mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" in str(error):
                return False
            raise
        return True

    async def read(self, count: int = 100, block_ms: int | None = None) -> list[Entry]:
        """Up to `count` entries: first stale ones taken over from other consumers, then new ones.

        `block_ms` waits for new entries (None: do not wait). Keep it below the client's socket timeout
        (2 s for `sobot_panel.redis.connect`). A group that vanished with its stream is created again.
        """
        try:
            return await self._read(count, block_ms)
        except ResponseError as error:
            if not str(error).startswith("NOGROUP"):
                raise
        await self.ensure_group(self._start)
        return await self._read(count, block_ms)

    async def _read(self, count: int, block_ms: int | None) -> list[Entry]:
        entries = await self._claim_stale(count)
        if len(entries) >= count:
            return entries
        reply = await self._redis.xreadgroup(
            self.group, self.consumer, {self._stream: ">"}, count=count - len(entries),
            block=None if entries else block_ms,
        )  # fmt: skip
        for _stream, page in _stream_pages(reply):
            entries.extend(_entry(raw_id, raw_fields) for raw_id, raw_fields in page)
        return entries

    async def _claim_stale(self, count: int, max_rounds: int = 50) -> list[Entry]:
        # XAUTOCLAIM looks at no more than COUNT*10 pending entries per call: an empty page with a
        # cursor other than 0-0 means "call again". The cursor is kept between reads, so a long
        # pending list is scanned a slice per read rather than all at once.
        claimed: list[Entry] = []
        gone: list[str] = []
        vanished = False
        for _ in range(max_rounds):
            cursor, page, *_deleted = await self._redis.xautoclaim(
                self._stream, self.group, self.consumer, self.claim_idle_ms,
                start_id=self._cursor, count=count - len(claimed),
            )  # fmt: skip
            self._cursor = as_text(cursor)
            for raw_id, raw_fields in page:
                if raw_id is None:
                    vanished = True  # Redis 6.2: trimmed away while pending, and its ID not given back
                elif raw_fields is None:
                    gone.append(as_text(raw_id))
                else:
                    claimed.append(_entry(raw_id, raw_fields))
            if self._cursor == "0-0" or len(claimed) >= count:
                break
        if vanished:
            gone.extend(await self._vanished())
        if gone:
            await self._redis.xack(self._stream, self.group, *gone)
        if not claimed:
            return claimed
        return await self._park_exhausted(claimed)

    async def _vanished(self) -> list[str]:
        """What this consumer holds pending whose entry is no longer in the stream (Redis 6.2 only)."""
        rows = await self._redis.xpending_range(self._stream, self.group, "-", "+", 100, consumername=self.consumer)
        ids = [as_text(row["message_id"]) for row in rows]
        return [entry_id for entry_id in ids if not await self._redis.xrange(self._stream, entry_id, entry_id)]

    async def _park_exhausted(self, claimed: list[Entry]) -> list[Entry]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry in claimed:
                pipe.xpending_range(self._stream, self.group, min=entry.entry_id, max=entry.entry_id, count=1)
            details = await pipe.execute()
        live: list[Entry] = []
        dead: list[tuple[Entry, int]] = []
        for entry, info in zip(claimed, details, strict=True):
            # times_delivered counts this claim too; the deliveries that went unacked are one fewer.
            deliveries = int(info[0]["times_delivered"]) - 1 if info else 0
            if deliveries >= self.dead_after:
                dead.append((entry, deliveries))
            else:
                live.append(entry)
        if dead:
            async with self._redis.pipeline(transaction=True) as pipe:
                for entry, deliveries in dead:
                    parked = {**entry.fields, "dead_reason": "max_deliveries", "original_id": entry.entry_id,
                              "deliveries": str(deliveries), "group": self.group}  # fmt: skip
                    pipe.xadd(self._dead, parked, maxlen=DEAD_LETTER_MAXLEN, approximate=True)  # type: ignore[arg-type]
                    pipe.xack(self._stream, self.group, entry.entry_id)
                await pipe.execute()
            for entry, deliveries in dead:
                log.error("audit: entry %s delivered %d times to group %r without an ack; moved to %s",
                          entry.entry_id, deliveries, self.group, self._dead)  # fmt: skip
        return live

    async def ack(self, ids: Iterable[str]) -> int:
        """Acknowledge processed entries; returns how many were pending."""
        pending = list(ids)
        if not pending:
            return 0
        return int(await self._redis.xack(self._stream, self.group, *pending))

    async def pending(self) -> int:
        """Entries of this group delivered and not acked yet (all consumers)."""
        summary = await self._redis.xpending(self._stream, self.group)
        return int(summary.get("pending", 0))

    async def leave(self) -> bool:
        """Remove this consumer from the group if it holds nothing pending (tidy exit of a short-lived reader)."""
        try:
            mine = await self._redis.xpending_range(self._stream, self.group, "-", "+", 1, consumername=self.consumer)
            if mine:
                return False
            await self._redis.xgroup_delconsumer(self._stream, self.group, self.consumer)
        except ResponseError:
            return False
        return True


def _stream_pages(reply: Any) -> list[tuple[str, list[Any]]]:
    """XREAD/XREADGROUP replies: a list of [stream, entries] (RESP2) or a dict (RESP3); None on timeout."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(as_text(name), list(value[0] if value and isinstance(value[0], list) else value))
                for name, value in reply.items()]  # fmt: skip
    return [(as_text(name), list(page)) for name, page in reply]


async def iter_range(
    redis: RedisClient, keys: Keys, start: str = "-", end: str = "+", count: int = 500
) -> AsyncIterator[Entry]:
    """Every entry with a stream ID in [start, end], page by page (XRANGE, no group): for exports."""
    cursor = start
    while True:
        page = await redis.xrange(keys.audit_stream, min=cursor, max=end, count=count) or []
        for raw_id, raw_fields in page:
            yield _entry(raw_id, raw_fields)
        if len(page) < count:
            return
        cursor = "(" + as_text(page[-1][0])


# --- time bounds ---------------------------------------------------------------------------------

_MAX_SEQ = 18_446_744_073_709_551_615
_RELATIVE = re.compile(r"^-(\d+)([smhdw])$")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_STREAM_ID = re.compile(r"^\(?\d+-\d+$")


def parse_time_bound(value: str | int, *, end: bool = False, now: int | None = None) -> str:
    """A stream ID bound for XRANGE from what an operator types.

    Accepted: a ms timestamp (`1764000000000`), an ISO date or time (`2026-11-24`, `2026-11-24T10:00`,
    with or without an offset; without one it is China time, UTC+8), a relative time (`-30m`, `-1h`,
    `-2d`, `-1w`, `now`), a stream ID (`1764000000000-0`), or `-`/`+`. An end bound includes its whole
    millisecond, and a date alone as an end bound includes that whole day. Stream IDs are the time an
    entry reached the stream (for a replayed record later than its `at`).
    """
    if isinstance(value, int):
        ms = value
    else:
        text = value.strip()
        if text in ("-", "+") or _STREAM_ID.match(text):
            return text
        ms = _parse_ms(text, end=end, now=now_ms() if now is None else now)
    ms = max(ms, 0)
    return f"{ms}-{_MAX_SEQ}" if end else f"{ms}-0"


def _parse_ms(text: str, *, end: bool, now: int) -> int:
    if text.isdigit():
        return int(text)
    if text == "now":
        return now
    relative = _RELATIVE.match(text)
    if relative:
        return now - int(relative.group(1)) * _UNIT_MS[relative.group(2)]
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=CHINA_TZ)
            if end:
                return int((moment + timedelta(days=1)).timestamp() * 1000) - 1
            return int(moment.timestamp() * 1000)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use 2026-11-24, 2026-11-24T10:00, -1h, now or a ms timestamp"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=CHINA_TZ)
    return int(moment.timestamp() * 1000)


# --- metrics -------------------------------------------------------------------------------------


class GroupStats(TypedDict):
    name: str
    consumers: int
    pending: int
    lag: int | None  # entries not yet delivered to the group; None when Redis cannot tell
    last_delivered_id: str


class StreamStats(TypedDict):
    length: int
    dead_letter_length: int
    groups: list[GroupStats]


class SpoolStats(TypedDict):
    files: int
    records: int
    bytes: int


async def stream_stats(redis: RedisClient, keys: Keys) -> StreamStats:
    """Stream length, dead-letter length, and per group: consumers, pending, lag (XINFO GROUPS)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xlen(keys.audit_stream)
        pipe.xlen(keys.audit_dead_letter)
        length, dead = await pipe.execute()
    try:
        groups = await redis.xinfo_groups(keys.audit_stream)
    except ResponseError:
        groups = []  # no stream yet
    return StreamStats(
        length=int(length),
        dead_letter_length=int(dead),
        groups=[
            GroupStats(
                name=as_text(group["name"]),
                consumers=int(group["consumers"]),
                pending=int(group["pending"]),
                lag=int(group["lag"]) if group.get("lag") is not None else None,
                last_delivered_id=as_text(group["last-delivered-id"]),
            )
            for group in groups
        ],
    )


async def spool_stats(spool: Spool | None) -> SpoolStats:
    if spool is None:
        return SpoolStats(files=0, records=0, bytes=0)
    depth = await asyncio.to_thread(spool.depth)
    return SpoolStats(files=depth.files, records=depth.records, bytes=depth.bytes)


async def oldest_unacked_ages(redis: RedisClient, keys: Keys, now: int | None = None) -> dict[str, float]:
    """Per consumer group: seconds since the oldest entry it has not acknowledged reached the stream (0: none)."""
    positions = await group_positions(redis, keys.audit_stream)
    if not positions:
        return {}
    newest = await redis.xrevrange(keys.audit_stream, count=1) or []
    last = parse_id(newest[0][0]) if newest else (0, 0)
    moment = now_ms() if now is None else now
    return {p.name: max(0.0, (moment - p.floor[0]) / 1000) if p.floor <= last else 0.0 for p in positions}


async def update_metrics(
    metrics: Metrics,
    redis: RedisClient,
    keys: Keys,
    spool: Spool | None = None,
    hard_maxlen: int | None = None,
    *,
    tenant: str = "",
) -> None:
    """Refresh one company's audit gauges (call it from /metrics). The spool is shared by the workers of a
    host, so each worker reports the whole directory: aggregate spool gauges with max(), not sum()."""
    spooled = await spool_stats(spool)
    metrics.audit_spool_records.labels(tenant).set(spooled["records"])
    metrics.audit_spool_bytes.labels(tenant).set(spooled["bytes"])
    if hard_maxlen is not None:
        metrics.audit_hard_maxlen.labels(tenant).set(hard_maxlen)
    try:
        stats = await stream_stats(redis, keys)
        ages = await oldest_unacked_ages(redis, keys)
    except REDIS_DOWN:
        metrics.redis_up.set(0)
        return  # the stream gauges keep their last values; panel_redis_up says why
    metrics.redis_up.set(1)
    metrics.audit_stream_length.labels(tenant).set(stats["length"])
    metrics.audit_dead_letter_length.labels(tenant).set(stats["dead_letter_length"])
    names = {group["name"] for group in stats["groups"]} | set(ages)
    for gone in metrics.audit_groups_reported.get(tenant, set()) - names:  # a group deleted stops being reported
        for gauge in (metrics.audit_group_pending, metrics.audit_group_lag, metrics.audit_group_oldest_unacked):
            with contextlib.suppress(KeyError):
                gauge.remove(gone, tenant)
    metrics.audit_groups_reported[tenant] = names
    for name, age in ages.items():
        metrics.audit_group_oldest_unacked.labels(name, tenant).set(age)
    for group in stats["groups"]:
        metrics.audit_group_pending.labels(group["name"], tenant).set(group["pending"])
        if group["lag"] is not None:
            metrics.audit_group_lag.labels(group["name"], tenant).set(group["lag"])


# --- pages for the HTTP API ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Page:
    entries: list[Entry]
    next: str | None  # the cursor to continue after; None: the range is exhausted


async def read_page(
    redis: RedisClient,
    keys: Keys,
    start: str,
    end: str,
    accept: Callable[[dict[str, str]], bool],
    *,
    limit: int,
    scan_budget: int,
) -> Page:
    """Up to `limit` entries with IDs in [start, end] that `accept` takes, scanning at most `scan_budget`.

    The cursor is the ID of the last entry looked at that the next page must not repeat: the last one
    returned when the page filled up, else the last one scanned. Following it until it is None returns
    every matching entry exactly once (entries appended meanwhile after the cursor are found too).
    """
    found: list[Entry] = []
    cursor = start
    scanned = 0
    while scanned < scan_budget:
        chunk = min(max(limit, 100), scan_budget - scanned)
        page = await redis.xrange(keys.audit_stream, min=cursor, max=end, count=chunk) or []
        for raw_id, raw_fields in page:
            entry = _entry(raw_id, raw_fields)
            scanned += 1
            if accept(entry.fields):
                found.append(entry)
                if len(found) == limit:
                    return Page(found, entry.entry_id)
        if len(page) < chunk:
            return Page(found, None)
        cursor = "(" + as_text(page[-1][0])
    return Page(found, cursor[1:])
