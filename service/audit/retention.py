"""Retention of the audit stream that never drops what a consumer group has not acknowledged.

CONTRACT "The audit stream": `PANEL_AUDIT_MAXLEN` (length) or `PANEL_AUDIT_MAX_AGE` (age, wins when set)
is the soft limit, and it never removes an entry that some consumer group has not acknowledged. An entry
is acknowledged by a group when the group was handed it (its ID is at or below the group's
last-delivered-id) and it is no longer in the group's pending list. `PANEL_AUDIT_HARD_MAXLEN` (default
10x the length) is the ceiling that protects Redis from a group abandoned for good: beyond it the oldest
entries go even unacknowledged, and every one of those is logged and counted.

How the soft limit is kept, by server:

- Redis 8.2 and newer trim by acknowledgement themselves: `XTRIM ... ACKED`. Exact trimming (`=`) is used:
  measured on 8.2.3, `~` together with `ACKED` removes nothing at all. ACKED also removes acknowledged
  entries behind one that is still pending (the stream then has holes), which the computed bound cannot.
- Older servers (6.2, 7.x, 8.0): the bound is computed here. The consumer floor is the oldest entry any
  group has not acknowledged: per group the smaller of its oldest pending entry and the entry after its
  last-delivered-id. Everything below the floor is acknowledged by every group. Then
  `XTRIM MINID ~ min(floor, age cut)`, or for a length `XTRIM MINID ~ floor LIMIT (length - maxlen)`: MINID
  never removes an entry at or above its ID, and LIMIT never lets the stream fall below the length.
  The floor is read before the trim; meanwhile consumers can only raise it (deliver, ack), so the trim
  is conservative. A group created later at "0" is not promised entries trimmed before it existed.

A pass runs every `PANEL_AUDIT_TRIM_INTERVAL` seconds on one replica at a time (a short Redis lock), so
the length overshoots by about what arrives in one interval plus one stream node (100 entries).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from redis.exceptions import ResponseError

from ..clock import now_ms
from ..redis import REDIS_DOWN, RedisClient, as_text
from ..redis.keys import Keys

log = logging.getLogger(__name__)

StreamId = tuple[int, int]
Mode = Literal["acked", "computed"]
# Entries removed per XTRIM call while catching up (whole nodes, in one call Redis frees them quickly).
TRIM_CHUNK = 10_000
# Entries dropped under the hard ceiling per pass: each is read first, to log and count it exactly.
FORCED_CHUNK = 10_000
MAX_CALLS_PER_PASS = 100


def parse_id(value: Any) -> StreamId:
    ms, _, seq = as_text(value).partition("-")
    return int(ms), int(seq or 0)


def format_id(value: StreamId) -> str:
    return f"{value[0]}-{value[1]}"


def next_id(value: StreamId) -> StreamId:
    return (value[0], value[1] + 1)


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    maxlen: int | None = None
    max_age_s: int | None = None
    hard_maxlen: int | None = None


@dataclass(frozen=True, slots=True)
class GroupPosition:
    name: str
    last_delivered: StreamId
    oldest_pending: StreamId | None

    @property
    def floor(self) -> StreamId:
        """The oldest entry this group has not acknowledged (possibly one not yet in the stream)."""
        after = next_id(self.last_delivered)
        return min(after, self.oldest_pending) if self.oldest_pending is not None else after


@dataclass(frozen=True, slots=True)
class TrimResult:
    mode: Mode
    trimmed: int  # acknowledged entries removed by the soft limit
    forced: int  # unacknowledged entries dropped under the hard ceiling
    floor: StreamId | None  # the oldest entry some group has not acknowledged; None: no group


async def group_positions(redis: RedisClient, stream: str) -> list[GroupPosition]:
    """Where each consumer group stands (no stream: none)."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:
        return []
    positions = []
    for group in groups:
        name = as_text(group["name"])
        oldest: StreamId | None = None
        if int(group["pending"]) > 0:
            summary = await redis.xpending(stream, name)
            if summary.get("min"):
                oldest = parse_id(summary["min"])
        positions.append(GroupPosition(name, parse_id(group["last-delivered-id"]), oldest))
    return positions


def consumer_floor(positions: list[GroupPosition]) -> StreamId | None:
    return min((position.floor for position in positions), default=None)


class Retention:
    """Keeps the stream within its limits without losing what a consumer group still has to read.

    `on_forced(n)` is called with the number of unacknowledged entries dropped under the hard ceiling
    (for the metric); `mode` None asks the server once whether it trims by acknowledgement (8.2+).
    """

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        policy: RetentionPolicy,
        *,
        on_forced: Callable[[int], None] | None = None,
        mode: Mode | None = None,
    ) -> None:
        self._redis = redis
        self._stream = keys.audit_stream
        self._lock_key = keys.audit_trim_lock
        self.policy = policy
        self._on_forced = on_forced
        self.mode = mode

    async def _mode(self) -> Mode:
        if self.mode is None:
            try:
                # A no-op on any stream (nothing is beyond this length); a syntax error before 8.2.
                await self._redis.execute_command("XTRIM", self._stream, "MAXLEN", "=", 2**62, "ACKED")
                self.mode = "acked"
            except ResponseError:
                self.mode = "computed"
            log.info("audit retention: %s", "Redis trims by acknowledgement (XTRIM ACKED)"
                     if self.mode == "acked" else "the consumer floor is computed here (Redis before 8.2)")  # fmt: skip
        return self.mode

    async def trim_once(self) -> TrimResult:
        """One pass: the soft limit (acknowledged entries only), then the hard ceiling."""
        mode = await self._mode()
        trimmed = await (self._soft_acked() if mode == "acked" else self._soft_computed())
        forced = await self._hard()
        floor = consumer_floor(await group_positions(self._redis, self._stream))
        return TrimResult(mode, trimmed, forced, floor)

    async def _soft_acked(self) -> int:
        policy = self.policy
        length_only = policy.maxlen is not None and policy.max_age_s is None
        if length_only and int(await self._redis.xlen(self._stream)) <= (policy.maxlen or 0):
            return 0
        # XTRIM ACKED looks at every candidate entry (measured on 8.2.3: 17.7 ms for 500,000 entries that a
        # stopped group was never handed). When the oldest entry is one some group was not even handed,
        # nothing at the head can go: skip the pass instead of scanning the backlog every few seconds.
        positions = await group_positions(self._redis, self._stream)
        if positions:
            handed = min(next_id(position.last_delivered) for position in positions)
            head = await self._redis.xrange(self._stream, "-", "+", count=1)
            if head and parse_id(head[0][0]) >= handed:
                return 0
        if policy.max_age_s is not None:
            cut = format_id((max(0, now_ms() - policy.max_age_s * 1000), 0))
            return int(await self._redis.execute_command("XTRIM", self._stream, "MINID", "=", cut, "ACKED"))
        if policy.maxlen is not None:
            return int(await self._redis.execute_command("XTRIM", self._stream, "MAXLEN", "=", policy.maxlen, "ACKED"))
        return 0

    async def _soft_computed(self) -> int:
        policy = self.policy
        floor = consumer_floor(await group_positions(self._redis, self._stream))
        removed = 0
        if policy.max_age_s is not None:
            cut: StreamId = (max(0, now_ms() - policy.max_age_s * 1000), 0)
            threshold = format_id(min(cut, floor) if floor is not None else cut)
            for _ in range(MAX_CALLS_PER_PASS):
                done = int(await self._redis.xtrim(self._stream, minid=threshold, approximate=True, limit=TRIM_CHUNK))
                removed += done
                if done < TRIM_CHUNK:
                    break
            return removed
        if policy.maxlen is None:
            return 0
        for _ in range(MAX_CALLS_PER_PASS):
            excess = int(await self._redis.xlen(self._stream)) - policy.maxlen
            if excess <= 0:
                break
            limit = min(excess, TRIM_CHUNK)
            if floor is None:
                done = int(await self._redis.xtrim(self._stream, maxlen=policy.maxlen, approximate=True, limit=limit))
            else:
                done = int(await self._redis.xtrim(self._stream, minid=format_id(floor), approximate=True, limit=limit))
            removed += done
            if done < limit:
                break
        return removed

    async def _hard(self) -> int:
        """Drop the oldest entries beyond the ceiling, each read first so the unacknowledged ones are counted."""
        hard = self.policy.hard_maxlen
        if hard is None:
            return 0
        excess = int(await self._redis.xlen(self._stream)) - hard
        if excess <= 0:
            return 0
        batch = await self._redis.xrange(self._stream, "-", "+", count=min(excess, FORCED_CHUNK)) or []
        if not batch:
            return 0
        ids = [parse_id(raw_id) for raw_id, _ in batch]
        unacked, behind = await self._unacknowledged(ids)
        # MINID = the entry after the batch: exactly these go, nothing newer (a concurrent XADD is newer).
        await self._redis.xtrim(self._stream, minid=format_id(next_id(ids[-1])), approximate=False)
        if unacked:
            log.error(
                "audit retention: the stream passed its hard ceiling of %d entries; dropped %d entries "
                "(%s .. %s) that consumer group(s) %s had not acknowledged",
                hard, len(unacked), format_id(unacked[0]), format_id(unacked[-1]), ", ".join(sorted(behind)),
            )  # fmt: skip
            if self._on_forced is not None:
                self._on_forced(len(unacked))
        return len(unacked)

    async def _unacknowledged(self, ids: list[StreamId]) -> tuple[list[StreamId], set[str]]:
        """Those of `ids` (oldest first) some group has not acknowledged, and the groups concerned."""
        positions = await group_positions(self._redis, self._stream)
        pending: dict[str, set[StreamId]] = {}
        for position in positions:
            if position.oldest_pending is not None and position.oldest_pending <= ids[-1]:
                rows = await self._redis.xpending_range(
                    self._stream, position.name, min=format_id(ids[0]), max=format_id(ids[-1]), count=len(ids)
                )
                pending[position.name] = {parse_id(row["message_id"]) for row in rows}
        unacked: list[StreamId] = []
        behind: set[str] = set()
        for entry_id in ids:
            holders = {p.name for p in positions if entry_id > p.last_delivered or entry_id in pending.get(p.name, ())}
            if holders:
                unacked.append(entry_id)
                behind |= holders
        return unacked, behind

    async def run(self, stop: asyncio.Event, *, interval_s: float = 5.0) -> None:
        """Until `stop`: a pass every `interval_s` on whichever replica takes the lock first."""
        token = secrets.token_hex(8)
        failing = False
        while not stop.is_set():
            try:
                lock_ms = max(100, int(interval_s * 900))
                if await self._redis.set(self._lock_key, token, nx=True, px=lock_ms):
                    await self.trim_once()
                failing = False
            except REDIS_DOWN as error:
                if not failing:
                    log.warning("audit retention: Redis unavailable (%s); trimming resumes when it is back",
                                type(error).__name__)  # fmt: skip
                failing = True
            except Exception:
                log.exception("audit retention pass failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
