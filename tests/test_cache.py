"""CustomerCache against a real Redis and the fake enterprise API."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from sobot_panel.directory.cache import CustomerCache
from sobot_panel.directory.http import HttpDirectory
from sobot_panel.directory.models import LookupKeys, UpstreamError
from sobot_panel.redis import EmbeddedRedis, connect
from sobot_panel.redis.keys import Keys

from .helpers import fake_enterprise as enterprise
from .helpers.fake_enterprise import TOKEN, FakeEnterprise

fake_enterprise = enterprise.fake_enterprise  # the fixture

KEYS = Keys("panel:")
C1001 = LookupKeys(partner_id="C1001")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def directory(fake_enterprise: FakeEnterprise) -> AsyncIterator[HttpDirectory]:
    upstream = HttpDirectory(fake_enterprise.url, TOKEN, 1.0, None)
    yield upstream
    await upstream.close()


def make_cache(redis: aioredis.Redis, directory: HttpDirectory, **overrides: Any) -> CustomerCache:
    options: dict[str, Any] = {"ttl": 60, "negative_ttl": 10, "local_ttl": 0, "local_size": 0}
    options.update(overrides)
    return CustomerCache(redis, directory, KEYS, **options)


async def commands_processed(redis: aioredis.Redis) -> int:
    return int((await redis.info("stats"))["total_commands_processed"])


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# --- tiers -----------------------------------------------------------------------------------


async def test_miss_then_redis_hit_without_upstream(
    redis_client: aioredis.Redis, directory: HttpDirectory, fake_enterprise: FakeEnterprise
) -> None:
    cache = make_cache(redis_client, directory)
    first = await cache.get(C1001)
    second = await cache.get(C1001)
    assert first.customer is not None and first.customer.name == "张伟"
    assert (first.source, second.source) == ("upstream", "redis")
    assert second.customer == first.customer and not second.stale
    assert second.tried == [("partnerId", "C1001")]
    assert fake_enterprise.total_calls == 1


async def test_redis_holds_a_fresh_and_a_stale_envelope(redis_client: aioredis.Redis, directory: HttpDirectory) -> None:
    cache = make_cache(redis_client, directory, ttl=60)
    before = time.time() * 1000
    await cache.get(LookupKeys(phone="13800000001"))
    envelope = json.loads(await redis_client.get(KEYS.customer("phone:13800000001")))
    assert envelope["v"] == 1 and before - 1000 <= envelope["at"] <= time.time() * 1000 + 1000
    assert envelope["c"]["partnerId"] == "C1001" and envelope["c"]["orders"]
    assert 0 < await redis_client.ttl(KEYS.customer("phone:13800000001")) <= 60
    assert await redis_client.ttl(KEYS.customer("stale:phone:13800000001")) > 60
    assert await redis_client.smembers(KEYS.customer_aliases("C1001")) == {"phone:13800000001"}
    assert await redis_client.ttl(KEYS.customer_aliases("C1001")) > 60


async def test_local_hit_costs_no_redis_command(
    redis_client: aioredis.Redis, directory: HttpDirectory, fake_enterprise: FakeEnterprise
) -> None:
    cache = make_cache(redis_client, directory, local_ttl=30, local_size=100)
    first = await cache.get(C1001)
    # Baseline: what two INFO calls in a row count (the INFO itself).
    baseline = -(await commands_processed(redis_client)) + await commands_processed(redis_client)
    before = await commands_processed(redis_client)
    hits = [await cache.get(C1001) for _ in range(50)]
    after = await commands_processed(redis_client)
    assert after - before == baseline
    assert {hit.source for hit in hits} == {"local"}
    assert all(hit.customer is first.customer for hit in hits)  # the parsed object itself: no JSON parsing
    assert fake_enterprise.total_calls == 1


async def test_local_tier_expires_to_redis(
    redis_client: aioredis.Redis, directory: HttpDirectory, fake_enterprise: FakeEnterprise
) -> None:
    clock = FakeClock()
    cache = make_cache(redis_client, directory, local_ttl=3, local_size=100, clock=clock)
    assert (await cache.get(C1001)).source == "upstream"
    clock.now += 2.9
    assert (await cache.get(C1001)).source == "local"
    clock.now += 0.2
    assert (await cache.get(C1001)).source == "redis"
    assert (await cache.get(C1001)).source == "local"
    assert fake_enterprise.total_calls == 1


async def test_local_tier_is_a_bounded_lru(redis_client: aioredis.Redis, directory: HttpDirectory) -> None:
    cache = make_cache(redis_client, directory, local_ttl=30, local_size=2)
    for partner in ("C1001", "C1002", "C1001", "C1003"):  # C1002 is the least recently used when C1003 comes
        await cache.get(LookupKeys(partner_id=partner))
    assert (await cache.get(LookupKeys(partner_id="C1001"))).source == "local"
    assert (await cache.get(LookupKeys(partner_id="C1002"))).source == "redis"


async def test_negative_answers_are_cached_briefly(
    redis_client: aioredis.Redis, directory: HttpDirectory, fake_enterprise: FakeEnterprise
) -> None:
    cache = make_cache(redis_client, directory, negative_ttl=7)
    nobody = LookupKeys(partner_id="C9999")
    first = await cache.get(nobody)
    second = await cache.get(nobody)
    assert first.customer is None and second.customer is None
    assert (first.source, second.source) == ("upstream", "redis")
    assert fake_enterprise.total_calls == 1
    assert 0 < await redis_client.ttl(KEYS.customer("partnerId:C9999")) <= 7
    assert not await redis_client.exists(KEYS.customer("stale:partnerId:C9999"))


async def test_keys_are_tried_in_order_until_one_finds(
    redis_client: aioredis.Redis, directory: HttpDirectory, fake_enterprise: FakeEnterprise
) -> None:
    cache = make_cache(redis_client, directory)
    lookup = LookupKeys(partner_id="C9999", phone="13800000002", email="li.na@example.cn")
    result = await cache.get(lookup)
    assert result.customer is not None and result.customer.partnerId == "C1002"
    assert result.tried == [("partnerId", "C9999"), ("phone", "13800000002"), ("email", "li.na@example.cn")]
    assert fake_enterprise.calls == {"partnerId:C9999": 1, "phone:13800000002": 1}


async def test_email_keys_share_one_entry_whatever_the_case(
    redis_client: aioredis.Redis, directory: HttpDirectory, fake_enterprise: FakeEnterprise
) -> None:
    cache = make_cache(redis_client, directory)
    await cache.get(LookupKeys(email="Li.Na@Example.cn"))
    assert (await cache.get(LookupKeys(email="li.na@example.cn"))).source == "redis"
    assert fake_enterprise.total_calls == 1


async def test_unreadable_redis_entry_is_a_miss(
    redis_client: aioredis.Redis, directory: HttpDirectory, fake_enterprise: FakeEnterprise
) -> None:
    await redis_client.set(KEYS.customer("partnerId:C1001"), "{garbage")
    result = await make_cache(redis_client, directory).get(C1001)
    assert result.customer is not None and result.source == "upstream"
    assert fake_enterprise.total_calls == 1


# --- single flight ---------------------------------------------------------------------------


async def test_concurrent_misses_share_one_upstream_call(
    redis_client: aioredis.Redis, directory: HttpDirectory, fake_enterprise: FakeEnterprise
) -> None:
    fake_enterprise.latency = 0.2
    cache = make_cache(redis_client, directory, local_ttl=30, local_size=100)
    before = await commands_processed(redis_client)
    results = await asyncio.gather(*(cache.get(C1001) for _ in range(100)))
    assert fake_enterprise.total_calls == 1
    # One fill for all: a GET, a SET NX and one store pipeline, not 100 readers polling Redis.
    assert await commands_processed(redis_client) - before < 15
    assert {r.customer.partnerId for r in results if r.customer} == {"C1001"} and len(results) == 100


async def test_two_replicas_share_one_upstream_call(
    redis_server: EmbeddedRedis, redis_client: aioredis.Redis, directory: HttpDirectory, fake_enterprise: FakeEnterprise
) -> None:
    fake_enterprise.latency = 0.2
    other_redis = connect(redis_server.url)
    try:
        replica_a = make_cache(redis_client, directory, local_ttl=30, local_size=100)
        replica_b = make_cache(other_redis, directory, local_ttl=30, local_size=100)
        results = await asyncio.gather(*(replica.get(C1001) for _ in range(20) for replica in (replica_a, replica_b)))
    finally:
        await other_redis.aclose()
    assert fake_enterprise.total_calls == 1
    assert all(r.customer is not None and r.customer.partnerId == "C1001" for r in results)
    assert {r.source for r in results} == {"upstream", "redis"}
    assert not await redis_client.exists(KEYS.customer_lock("partnerId:C1001"))  # released


async def test_a_lock_holder_that_never_answers_does_not_block(
    redis_client: aioredis.Redis, directory: HttpDirectory, fake_enterprise: FakeEnterprise
) -> None:
    await redis_client.set(KEYS.customer_lock("partnerId:C1001"), "another-replica", px=400)
    started = time.monotonic()
    result = await make_cache(redis_client, directory).get(C1001)
    waited = time.monotonic() - started
    assert result.customer is not None and result.source == "upstream"
    assert 0.3 < waited < 2.0
    assert fake_enterprise.total_calls == 1


# --- stale-if-error --------------------------------------------------------------------------


async def test_stale_copy_when_upstream_fails_after_expiry(
    redis_client: aioredis.Redis, directory: HttpDirectory, fake_enterprise: FakeEnterprise
) -> None:
    cache = make_cache(redis_client, directory, ttl=1)
    fresh = await cache.get(C1001)

    async def expired() -> bool:
        return not await redis_client.exists(KEYS.customer("partnerId:C1001"))

    await eventually(expired)
    fake_enterprise.fail_with = 500
    stale = await cache.get(C1001)
    assert (stale.source, stale.stale) == ("stale", True)
    assert stale.customer == fresh.customer

    fake_enterprise.fail_with = None
    recovered = await cache.get(C1001)
    assert (recovered.source, recovered.stale) == ("upstream", False)


async def test_local_stale_copy_when_redis_and_upstream_fail(
    own_redis: EmbeddedRedis, directory: HttpDirectory, fake_enterprise: FakeEnterprise
) -> None:
    clock = FakeClock()
    client = connect(own_redis.url)
    try:
        cache = make_cache(client, directory, local_ttl=3, local_size=10, clock=clock)
        fresh = await cache.get(C1001)
        own_redis.stop()
        fake_enterprise.fail_with = 503
        clock.now += 10
        stale = await cache.get(C1001)
    finally:
        await client.aclose()
    assert (stale.source, stale.stale) == ("stale", True) and stale.customer is fresh.customer


async def test_upstream_failure_without_any_copy_raises(
    redis_client: aioredis.Redis, directory: HttpDirectory, fake_enterprise: FakeEnterprise
) -> None:
    fake_enterprise.fail_with = 500
    with pytest.raises(UpstreamError, match="500"):
        await make_cache(redis_client, directory).get(C1001)


async def test_after_an_upstream_failure_other_keys_use_caches_only(
    redis_client: aioredis.Redis, directory: HttpDirectory, fake_enterprise: FakeEnterprise
) -> None:
    cache = make_cache(redis_client, directory)
    await cache.get(LookupKeys(phone="13800000001"))
    fake_enterprise.reset()
    fake_enterprise.fail_with = 500
    result = await cache.get(LookupKeys(partner_id="C1001", phone="13800000001", email="zhang.wei@example.cn"))
    assert result.customer is not None and result.source == "redis" and not result.stale
    assert fake_enterprise.calls == {"partnerId:C1001": 1}  # one failed call, not one per key

    with pytest.raises(UpstreamError):  # nothing cached for any key: the failure is the answer
        await cache.get(LookupKeys(partner_id="C1002", uid="u-2"))
    assert fake_enterprise.calls["uid:u-2"] == 0


# --- invalidation ----------------------------------------------------------------------------


async def test_invalidate_drops_every_alias_and_tells_every_replica(
    redis_server: EmbeddedRedis, redis_client: aioredis.Redis, directory: HttpDirectory, fake_enterprise: FakeEnterprise
) -> None:
    cache = make_cache(redis_client, directory, local_ttl=30, local_size=100)
    lookups = [
        LookupKeys(partner_id="C1001"),
        LookupKeys(phone="13800000001"),
        LookupKeys(email="zhang.wei@example.cn"),
    ]
    for lookup in lookups:
        await cache.get(lookup)
    aliases = {"partnerId:C1001", "phone:13800000001", "email:zhang.wei@example.cn"}
    assert await redis_client.smembers(KEYS.customer_aliases("C1001")) == aliases
    await cache.get(LookupKeys(partner_id="C1002"))  # someone else, untouched

    listener = connect(redis_server.url)
    pubsub = listener.pubsub()
    await pubsub.subscribe(KEYS.invalidations_channel, KEYS.partner_channel("C1001"))
    try:
        await cache.invalidate("C1001")
        heard: list[tuple[str, str]] = []
        deadline = time.monotonic() + 5
        while len(heard) < 2 and time.monotonic() < deadline:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is not None:
                heard.append((message["channel"], message["data"]))
    finally:
        await pubsub.aclose()
        await listener.aclose()
    assert sorted(heard) == sorted(
        [(KEYS.invalidations_channel, "C1001"), (KEYS.partner_channel("C1001"), "invalidate")]
    )

    for alias in aliases:
        assert not await redis_client.exists(KEYS.customer(alias), KEYS.customer(f"stale:{alias}"))
    assert not await redis_client.exists(KEYS.customer_aliases("C1001"))
    assert await redis_client.exists(KEYS.customer("partnerId:C1002"))

    fake_enterprise.reset()
    results = [await cache.get(lookup) for lookup in lookups]
    assert [r.source for r in results] == ["upstream"] * 3
    assert (await cache.get(LookupKeys(partner_id="C1002"))).source == "local"


async def test_invalidate_also_forgets_a_cached_not_found(
    redis_client: aioredis.Redis, directory: HttpDirectory, fake_enterprise: FakeEnterprise
) -> None:
    cache = make_cache(redis_client, directory, local_ttl=30, local_size=100)
    assert (await cache.get(LookupKeys(partner_id="C2000"))).customer is None  # a customer not created yet
    await cache.invalidate("C2000")
    assert (await cache.get(LookupKeys(partner_id="C2000"))).source == "upstream"
    assert fake_enterprise.calls == {"partnerId:C2000": 2}


async def test_drop_local_falls_back_to_redis(redis_client: aioredis.Redis, directory: HttpDirectory) -> None:
    cache = make_cache(redis_client, directory, local_ttl=30, local_size=100)
    await cache.get(LookupKeys(phone="13800000001"))
    await cache.get(LookupKeys(partner_id="C1002"))
    cache.drop_local("C1001")
    assert (await cache.get(LookupKeys(phone="13800000001"))).source == "redis"
    assert (await cache.get(LookupKeys(partner_id="C1002"))).source == "local"
    cache.drop_local("C0000")  # unknown: nothing to do


async def test_invalidate_raises_when_redis_is_down(own_redis: EmbeddedRedis, directory: HttpDirectory) -> None:
    client = connect(own_redis.url)
    try:
        own_redis.stop()
        with pytest.raises(RedisError):
            await make_cache(client, directory).invalidate("C1001")
    finally:
        await client.aclose()


# --- Redis down ------------------------------------------------------------------------------


async def test_redis_down_bypasses_to_upstream_and_recovers(
    own_redis: EmbeddedRedis, directory: HttpDirectory, fake_enterprise: FakeEnterprise
) -> None:
    client = connect(own_redis.url)
    try:
        cache = make_cache(client, directory)
        assert (await cache.get(C1001)).source == "upstream"

        own_redis.stop()
        fake_enterprise.reset()
        fake_enterprise.latency = 0.1
        started = time.monotonic()
        during = await asyncio.gather(*(cache.get(LookupKeys(partner_id="C1002")) for _ in range(20)))
        assert time.monotonic() - started < 1.5
        assert {r.source for r in during} == {"bypass"}
        assert all(r.customer is not None and r.customer.partnerId == "C1002" for r in during)
        assert fake_enterprise.total_calls == 1  # still single-flight in the process
        assert (await cache.get(C1001)).source == "bypass"

        own_redis.start()
        fake_enterprise.latency = 0.0

        async def cached_again() -> bool:
            return (await cache.get(LookupKeys(partner_id="C1003"))).source in ("upstream", "redis")

        await eventually(cached_again)
        assert (await cache.get(LookupKeys(partner_id="C1003"))).source == "redis"
    finally:
        await client.aclose()
