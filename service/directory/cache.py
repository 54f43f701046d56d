"""`CustomerCache`: the directory behind two cache tiers, single-flight and stale-if-error.

Tier 1 is a small in-process LRU of parsed `Customer` objects (a hot hit costs no Redis round trip
and no JSON parsing). Tier 2 is Redis, shared by every replica. For each lookup alias (`phone:138…`)
Redis holds two keys with the same JSON envelope `{"v": 1, "at": ms, "c": customer | null}`:

- `cache:customer:{alias}`, the fresh copy, `EX ttl` (`EX negative_ttl` for "nobody matches");
- `cache:customer:stale:{alias}`, the stale-if-error copy, `EX max(ttl * 10, 3600)`, found customers only.

So a key's Redis TTL *is* its freshness, with no clock shared between replicas. The set
`cache:aliases:{partnerId}` lists every alias a customer was found by, so `invalidate()` can drop
them all. A miss is fetched once per process (in-flight tasks) and, across replicas, by the holder
of a short `SET NX PX` lock while the others poll. When Redis fails, the cache steps aside for a
second ("bypass") and asks the upstream directly; `get()` never raises a Redis error.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ..redis import REDIS_DOWN, RedisClient
from ..redis.keys import Keys
from .models import Customer, Directory, LookupKeys, UpstreamError

log = logging.getLogger(__name__)

T = TypeVar("T")


ENVELOPE_VERSION = 1
LOCK_MS = 3000  # how long one replica may hold the right to fill a key
REDIS_OP_TIMEOUT = 1.0  # seconds for one Redis round trip on the page path
REDIS_RETRY_AFTER = 1.0  # after a Redis failure, skip Redis this long instead of paying a timeout per page
_RELEASE_LOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore")

    v: int = ENVELOPE_VERSION
    at: int
    c: Customer | None


@dataclass(frozen=True, slots=True)
class CacheResult:
    """The customer (None: nobody matches), whether it is a stale copy, and where it came from.

    `source` is one of "local", "redis", "upstream", "stale", "bypass" (Redis down, upstream asked).
    """

    customer: Customer | None
    stale: bool
    source: str
    tried: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class _Answer:
    customer: Customer | None
    source: str
    stale: bool = False


@dataclass(slots=True)
class _Local:
    customer: Customer | None
    fresh_until: float  # expired entries stay (LRU-bounded) as stale-if-error copies


def _alias(key: str, value: str) -> str:
    return f"{key}:{value.strip().casefold() if key == 'email' else value.strip()}"


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class CustomerCache:
    """Customers by lookup key, through the local tier, Redis, and once per miss the directory."""

    def __init__(
        self,
        redis: RedisClient,
        directory: Directory,
        keys: Keys,
        *,
        ttl: int,
        negative_ttl: int,
        local_ttl: float,
        local_size: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._directory = directory
        self._keys = keys
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.stale_ttl = max(ttl * 10, 3600)
        self.local_ttl = local_ttl
        self.local_size = local_size
        self._clock = clock  # the local tier's clock (tests inject one); Redis expiry is Redis's own
        self._local: OrderedDict[str, _Local] = OrderedDict()
        self._local_by_partner: dict[str, set[str]] = {}
        self._flights: dict[str, asyncio.Task[_Answer]] = {}
        self._decoded: OrderedDict[str | bytes, _Envelope] = OrderedDict()
        self._redis_down_until = 0.0

    # --- public ----------------------------------------------------------------------------------

    async def get(self, lookup: LookupKeys | Sequence[tuple[str, str]]) -> CacheResult:
        """Try each lookup key in order until one finds the customer or all say nobody matches.

        `lookup` is LookupKeys (tried in the API's order) or (lookup name, value) pairs in the order to try.

        Raises UpstreamError only when the upstream failed and no copy (fresh or stale) answers.
        After one upstream failure the remaining keys are answered from the caches only, so a dead
        upstream costs a page one timeout, not one per key.
        """
        tried = lookup.ordered() if isinstance(lookup, LookupKeys) else [(k, v.strip()) for k, v in lookup if v.strip()]
        error: UpstreamError | None = None
        source = "local"
        for key, value in tried:
            try:
                answer = await self._resolve(_alias(key, value), key, value, upstream=error is None)
            except UpstreamError as failure:
                error = failure
                continue
            if answer is None:
                continue
            if answer.customer is not None:
                return CacheResult(answer.customer, answer.stale, answer.source, tried)
            source = answer.source
        if error is not None:
            raise error
        return CacheResult(None, False, source, tried)

    async def invalidate(self, partner_id: str) -> None:
        """Drop every cached alias of the customer, here and in Redis, then tell every replica.

        Redis errors propagate (the API handler answers 503).
        """
        aliases_key = self._keys.customer_aliases(partner_id)
        members = {m.decode() if isinstance(m, bytes) else m for m in await self._redis.smembers(aliases_key)}
        members.add(_alias("partnerId", partner_id))
        async with self._redis.pipeline(transaction=False) as pipe:
            for alias in sorted(members):  # one key per DEL: aliases may hash to different Cluster slots
                pipe.delete(self._keys.customer(alias))
                pipe.delete(self._stale_key(alias))
            pipe.delete(aliases_key)
            await pipe.execute()
        self.drop_local(partner_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.publish(self._keys.invalidations_channel, partner_id)
            pipe.publish(self._keys.partner_channel(partner_id), "invalidate")
            await pipe.execute()

    def drop_local(self, partner_id: str) -> None:
        """Forget the in-process copies of one customer (every replica calls this on an invalidation)."""
        doomed = self._local_by_partner.pop(partner_id, set())
        doomed.add(_alias("partnerId", partner_id))
        for alias in doomed:
            self._local_drop(alias)

    # --- one lookup key --------------------------------------------------------------------------

    async def _resolve(self, alias: str, key: str, value: str, *, upstream: bool) -> _Answer | None:
        entry = self._local.get(alias)
        if entry is not None and entry.fresh_until > self._clock():
            self._local.move_to_end(alias)
            return _Answer(entry.customer, "local")
        if not upstream:
            return await self._cached_only(alias)
        flight = self._flights.get(alias)
        if flight is None:  # single-flight: concurrent misses in this process share one fill
            flight = asyncio.create_task(self._fill(alias, key, value), name=f"customer-fill:{key}")
            self._flights[alias] = flight
            flight.add_done_callback(partial(self._landed, alias))
        return await asyncio.shield(flight)

    def _landed(self, alias: str, task: asyncio.Task[_Answer]) -> None:
        if self._flights.get(alias) is task:
            del self._flights[alias]
        if not task.cancelled():
            task.exception()  # retrieved: its waiters may all have been cancelled

    async def _fill(self, alias: str, key: str, value: str) -> _Answer:
        use_redis = self._redis_up()
        lock_token: str | None = None
        if use_redis:
            try:
                cached = await self._read(self._keys.customer(alias))
                if cached is not None:
                    return self._remember(alias, cached.c, "redis")
                lock_token = secrets.token_hex(8)
                lock = self._keys.customer_lock(alias)
                if not await self._op(self._redis.set(lock, lock_token, nx=True, px=LOCK_MS)):
                    lock_token = None  # another replica is fetching it: wait for its answer
                    filled = await self._await_other(alias)
                    if filled is not None:
                        return filled
            except REDIS_DOWN as error:
                use_redis = self._redis_failed(error)
        try:
            customer = await self._directory.lookup(key, value)
        except UpstreamError as error:
            if use_redis and lock_token is not None:
                await self._release(alias, lock_token)
            stale = await self._stale(alias, use_redis)
            if stale is None:
                raise
            log.warning("customer API failed (%s); serving a stale copy", error.reason)
            return _Answer(stale, "stale", stale=True)
        if use_redis:
            try:
                await self._store(alias, customer, lock_token)
            except REDIS_DOWN as error:
                use_redis = self._redis_failed(error)
        return self._remember(alias, customer, "upstream" if use_redis else "bypass")

    async def _cached_only(self, alias: str) -> _Answer | None:
        """Answer from Redis or a stale copy without asking the upstream; None when nothing is known."""
        if self._redis_up():
            try:
                cached = await self._read(self._keys.customer(alias))
                if cached is not None:
                    return self._remember(alias, cached.c, "redis")
            except REDIS_DOWN as error:
                self._redis_failed(error)
        stale = await self._stale(alias, self._redis_up())
        return _Answer(stale, "stale", stale=True) if stale is not None else None

    async def _await_other(self, alias: str) -> _Answer | None:
        """Poll, with backoff, until the lock holder stores the answer, gives up, or the lock expires."""
        deadline = time.monotonic() + LOCK_MS / 1000
        delay = 0.01
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(self._keys.customer(alias))
                pipe.exists(self._keys.customer_lock(alias))
                raw, locked = await self._op(pipe.execute())
            cached = self._decode(raw)
            if cached is not None:
                return self._remember(alias, cached.c, "redis")
            if not locked:
                return None  # the holder failed without storing: ask the upstream ourselves
        return None

    async def _stale(self, alias: str, use_redis: bool) -> Customer | None:
        if use_redis:
            try:
                cached = await self._read(self._stale_key(alias))
                if cached is not None and cached.c is not None:
                    return cached.c
            except REDIS_DOWN as error:
                self._redis_failed(error)
        entry = self._local.get(alias)
        return entry.customer if entry is not None else None

    # --- Redis -----------------------------------------------------------------------------------

    def _stale_key(self, alias: str) -> str:
        return self._keys.customer(f"stale:{alias}")  # "stale" is never a lookup key name: no clash

    async def _op(self, call: Awaitable[T]) -> T:
        async with asyncio.timeout(REDIS_OP_TIMEOUT):
            return await call

    async def _read(self, key: str) -> _Envelope | None:
        return self._decode(await self._op(self._redis.get(key)))

    def _decode(self, raw: str | bytes | None) -> _Envelope | None:
        """The envelope in these bytes. The same bytes again give the same objects: no second parse, and
        the renderer, which caches a customer's views per Customer object, keeps hitting its cache after the
        local tier expired and the customer was read again, unchanged, from Redis."""
        if raw is None:
            return None
        known = self._decoded.get(raw)
        if known is not None:
            self._decoded.move_to_end(raw)
            return known
        try:
            envelope = _Envelope.model_validate_json(raw)
        except ValidationError:
            log.warning("unreadable customer cache entry ignored")
            return None
        if envelope.v != ENVELOPE_VERSION:
            return None
        self._remember_decoded(raw, envelope)
        return envelope

    def _remember_decoded(self, raw: str | bytes, envelope: _Envelope) -> None:
        self._decoded[raw] = envelope
        if len(self._decoded) > max(self.local_size, 64):
            self._decoded.popitem(last=False)

    async def _store(self, alias: str, customer: Customer | None, lock_token: str | None) -> None:
        fresh = _Envelope(at=_wall_ms(), c=customer)
        envelope = fresh.model_dump_json()
        async with self._redis.pipeline(transaction=False) as pipe:
            if customer is None:
                pipe.set(self._keys.customer(alias), envelope, ex=self.negative_ttl)
                pipe.delete(self._stale_key(alias))  # gone upstream: never serve the old copy again
            else:
                aliases_key = self._keys.customer_aliases(customer.partnerId)
                pipe.set(self._keys.customer(alias), envelope, ex=self.ttl)
                pipe.set(self._stale_key(alias), envelope, ex=self.stale_ttl)
                pipe.sadd(aliases_key, alias)
                pipe.expire(aliases_key, self.stale_ttl)
            if lock_token is not None:  # released after the value is in place, so waiters find it
                pipe.eval(_RELEASE_LOCK, 1, self._keys.customer_lock(alias), lock_token)
            await self._op(pipe.execute())
        self._remember_decoded(envelope, fresh)  # reading these bytes back gives this very customer object

    async def _release(self, alias: str, lock_token: str) -> None:
        try:
            await self._op(self._redis.eval(_RELEASE_LOCK, 1, self._keys.customer_lock(alias), lock_token))
        except REDIS_DOWN as error:
            self._redis_failed(error)

    def _redis_up(self) -> bool:
        return time.monotonic() >= self._redis_down_until

    def _redis_failed(self, error: BaseException) -> bool:
        if self._redis_up():
            log.warning("Redis unavailable (%s); customer lookups bypass the cache", type(error).__name__)
        self._redis_down_until = time.monotonic() + REDIS_RETRY_AFTER
        return False

    # --- the in-process tier ---------------------------------------------------------------------

    def _remember(self, alias: str, customer: Customer | None, source: str) -> _Answer:
        if self.local_ttl > 0 and self.local_size > 0:
            self._local_drop(alias)
            freshness = min(self.local_ttl, self.ttl if customer is not None else self.negative_ttl)
            self._local[alias] = _Local(customer, self._clock() + freshness)
            if customer is not None:
                self._local_by_partner.setdefault(customer.partnerId, set()).add(alias)
            while len(self._local) > self.local_size:
                self._local_drop(next(iter(self._local)))
        return _Answer(customer, source)

    def _local_drop(self, alias: str) -> None:
        entry = self._local.pop(alias, None)
        if entry is None or entry.customer is None:
            return
        partner_id = entry.customer.partnerId
        aliases = self._local_by_partner.get(partner_id)
        if aliases is not None:
            aliases.discard(alias)
            if not aliases:
                del self._local_by_partner[partner_id]
