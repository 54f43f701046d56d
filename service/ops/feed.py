"""The ops dashboard's moving parts: the consumer that keeps the rolling counters, and the live feed.

`OpsCounter` reads the audit stream through the consumer group `ops` (one consumer per replica) and,
in one Lua script per entry, acks it and bumps the minute and hour counters, then publishes it on
the feed channel. `OpsFeed` listens to that channel on every replica and fans entries out to the
dashboard's Server-Sent Events clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from typing import Any

from ..audit.reader import AuditReader, Entry
from ..redis import REDIS_DOWN, RedisClient
from ..redis.keys import Keys
from ..redis.pubsub import PubSubReader, Router
from .counters import (
    STREAM_ID,
    bucket_fields,
    entry_minute,
    expires_at_s,
    feed_item,
    id_order,
)

log = logging.getLogger(__name__)

GROUP = "ops"
RECENT_IDS = 4_096  # entry IDs a replica's feed remembers, to pass each on once
READ_BATCH = 500
BLOCK_MS = 500  # short, so the consumer sees its stop flag (redis-py may swallow a cancellation)
# The consumer's budget: after each batch it rests this long, so under a stream of sends it reads and
# counts them in batches (one XAUTOCLAIM + XREADGROUP and one pipelined round trip per batch) rather than
# one read per send competing with the sends for the replica's CPU: at most READ_BATCH entries per tick
# (5,000 a second), each counted within a tick plus a block of when it was added.
TICK_S = 0.1
BACKFILL_MAX = 200
CLIENT_QUEUE = 1_000

# Count and publish each entry of a batch only if this consumer's ack is the one that takes it off the
# pending list. KEYS: the stream, then each entry's minute and hour buckets. ARGV: the group, the feed
# channel, then for each entry its ID, the two buckets' expiry times, its feed item, how many hash fields
# it increments, and those fields. One script per batch: a send costs Redis no call of its own. The
# items counted go out as one message, one compact JSON item per line (JSON text holds no raw newline),
# so every replica's feed handles a message per batch, not one per send.
_COUNT = """
local group, channel = ARGV[1], ARGV[2]
local i, k, counted, items = 3, 2, 0, {}
while i <= #ARGV do
  local n = tonumber(ARGV[i + 4])
  if redis.call('XACK', KEYS[1], group, ARGV[i]) == 1 then
    for j = i + 5, i + 4 + n do
      redis.call('HINCRBY', KEYS[k], ARGV[j], 1)
      redis.call('HINCRBY', KEYS[k + 1], ARGV[j], 1)
    end
    redis.call('EXPIREAT', KEYS[k], ARGV[i + 1])
    redis.call('EXPIREAT', KEYS[k + 1], ARGV[i + 2])
    counted = counted + 1
    items[counted] = ARGV[i + 3]
  end
  i = i + 5 + n
  k = k + 2
end
if counted > 0 then redis.call('PUBLISH', channel, table.concat(items, '\\n')) end
return counted
"""
# Entries per script call: Redis runs a script without serving anyone else, so a big batch is split.
COUNT_CHUNK = 100


def feed_channel(keys: Keys) -> str:
    """Every replica's dashboard clients hear counted sends here."""
    return f"{keys.prefix}ops:feed"


# --- counting ---------------------------------------------------------------------------------------


class OpsCounter:
    """This replica's consumer of the group `ops`: rolling counters and the feed, each entry once."""

    def __init__(self, redis: RedisClient, keys: Keys, consumer: str, *, claim_idle_ms: int = 60_000,
                 dead_after: int = 5, batch: int = READ_BATCH, tick_s: float = TICK_S) -> None:  # fmt: skip
        self._redis = redis
        self._keys = keys
        self.reader = AuditReader(redis, keys, GROUP, consumer, claim_idle_ms=claim_idle_ms, dead_after=dead_after)
        self._script = redis.register_script(_COUNT)
        self._stop = asyncio.Event()
        self.counted = 0
        self.batch = batch
        self.tick_s = tick_s

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Read, count, ack until stopped; ride out Redis outages with backoff."""
        delay, failing, ready = 0.1, False, False
        while not self._stop.is_set():
            try:
                if not ready:
                    await self.reader.ensure_group("$")  # new sends only; an existing group keeps its place
                    # listed in XINFO CONSUMERS from now on, not only once it was handed an entry
                    await self._redis.xgroup_createconsumer(self._keys.audit_stream, GROUP, self.reader.consumer)
                    ready = True
                entries = await self.reader.read(self.batch, block_ms=BLOCK_MS)
                if entries:
                    await self.count(entries)
                if failing:
                    log.info("ops counters: Redis is back")
                delay, failing = 0.1, False
                if entries:
                    await self._pause(self.tick_s)  # the budget: the next sends are read as one batch
            except REDIS_DOWN as error:
                if not failing:
                    log.warning("ops counters: Redis unavailable (%s); retrying", type(error).__name__)
                failing = True
                await self._pause(delay)
                delay = min(delay * 2, 5.0)
            except Exception:
                log.exception("ops counters: unexpected failure; retrying")
                await self._pause(1.0)
        with contextlib.suppress(*REDIS_DOWN):
            await self.reader.leave()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def count(self, entries: list[Entry]) -> int:
        """Count, ack and publish a batch in one round trip; returns how many this consumer counted."""
        channel = feed_channel(self._keys)
        async with self._redis.pipeline(transaction=False) as pipe:
            for start in range(0, len(entries), COUNT_CHUNK):
                keys = [self._keys.audit_stream]
                args: list[str | int] = [GROUP, channel]
                for entry in entries[start : start + COUNT_CHUNK]:
                    minute = entry_minute(entry.entry_id, entry.fields)
                    hour = minute // 60
                    keys += [self._keys.audit_counter("m", str(minute)), self._keys.audit_counter("h", str(hour))]
                    fields = bucket_fields(entry.fields)
                    args += [entry.entry_id, expires_at_s(minute), expires_at_s(hour * 60),
                             _compact(feed_item(entry.entry_id, entry.fields)), len(fields), *fields]  # fmt: skip
                await self._script(keys=keys, args=args, client=pipe)  # type: ignore[arg-type]
            results = await pipe.execute()
        counted = sum(int(result) for result in results)
        self.counted += counted
        return counted


# --- the live feed ----------------------------------------------------------------------------------

Frame = tuple[str, bytes]  # the entry's stream ID, and the SSE event carrying it


def sse_frame(entry_id: str, data: str) -> Frame:
    """One `send` event; `data` is the entry's feed item as compact JSON (one line)."""
    return entry_id, f"id: {entry_id}\nevent: send\ndata: {data}\n\n".encode()


_ID_HEAD = '{"entryId":"'


def _entry_id(item: str) -> str:
    """The entry ID a feed item names ("" when it names none): read off the front of the items this
    service writes (`entryId` first), else parsed."""
    if item.startswith(_ID_HEAD):
        end = item.find('"', len(_ID_HEAD))
        if end > 0 and STREAM_ID.match(item[len(_ID_HEAD) : end]):
            return item[len(_ID_HEAD) : end]
    try:
        return str(json.loads(item)["entryId"])
    except (ValueError, TypeError, KeyError):
        return ""


def _compact(item: dict[str, Any]) -> str:
    return json.dumps(item, ensure_ascii=False, separators=(",", ":"))


def frames_of(page: list[Any] | None) -> list[Frame]:
    """Events for a page of stream entries (XRANGE reply)."""
    frames = []
    for raw_id, raw in page or []:
        entry_id, fields = str(raw_id), {str(k): str(v) for k, v in (raw or {}).items()}
        frames.append(sse_frame(entry_id, _compact(feed_item(entry_id, fields))))
    return frames


class OpsFeed:
    """This replica's subscription to the feed channel and its SSE clients (a queue each).

    After a lost subscription it reads what it missed from the stream (after the newest entry it passed on),
    so a Redis restart leaves no gap; entries that then arrive by pub/sub as well are passed on once.
    """

    def __init__(self, redis: RedisClient, keys: Keys, reader: PubSubReader, router: Router) -> None:
        self._redis = redis
        self._keys = keys
        self.clients: set[asyncio.Queue[Frame | None]] = set()
        self.closing = False
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._newest = (-1, -1)
        self.channel = feed_channel(keys)
        self.reader = reader  # the deployment's one pub/sub reader, shared with the live hub
        self._router = router
        self._started: asyncio.Task[None] | None = None

    def attach(self) -> None:
        """Start hearing the feed channel through the shared reader (and catching up after its reconnects)."""
        self._router.on_channel(self.channel, self._on_message)
        self._router.on_connect(self, self._catch_up)
        self.reader.listen(self.channel)
        if self.reader.connected.is_set():  # already connected: start from the newest entry there is now
            self._started = asyncio.get_running_loop().create_task(self._catch_up(False))

    def detach(self) -> None:
        self.reader.unlisten(self.channel)
        self._router.forget(self.channel, handler=self._on_message)
        self._router.forget_owner(self)

    @property
    def subscribed(self) -> asyncio.Event:
        """Set while the shared reader is subscribed; tests wait on it."""
        return self.reader.connected

    def join(self) -> asyncio.Queue[Frame | None]:
        queue: asyncio.Queue[Frame | None] = asyncio.Queue(CLIENT_QUEUE)
        self.clients.add(queue)
        return queue

    def leave(self, queue: asyncio.Queue[Frame | None]) -> None:
        self.clients.discard(queue)

    def deliver(self, frame: Frame | None) -> None:
        if frame is not None:
            if frame[0] in self._recent:
                return
            self._recent[frame[0]] = None
            if len(self._recent) > RECENT_IDS:
                self._recent.popitem(last=False)
            self._newest = max(self._newest, id_order(frame[0]))
        for queue in list(self.clients):
            try:
                queue.put_nowait(frame)
            except asyncio.QueueFull:
                # A client this far behind is closed; its EventSource reconnects and backfills from the stream.
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)

    def close_all(self) -> None:
        self.closing = True
        self.deliver(None)

    def _on_message(self, channel: str, data: str) -> None:
        for item in data.split("\n"):  # a counted batch: one item per line
            entry_id = _entry_id(item)
            if entry_id:
                self.deliver(sse_frame(entry_id, item))

    async def _catch_up(self, reconnected: bool) -> None:
        stream = self._keys.audit_stream
        if not reconnected:  # nothing missed yet: start from the newest entry there is
            newest = await self._redis.xrevrange(stream, count=1) or []
            self._newest = max(self._newest, id_order(str(newest[0][0])) if newest else (0, 0))
            return
        start = "{}-{}".format(*self._newest) if self._newest >= (0, 0) else "0-0"
        for frame in frames_of(await self._redis.xrange(stream, min=f"({start}", count=BACKFILL_MAX)):
            self.deliver(frame)


# --- access -----------------------------------------------------------------------------------------
