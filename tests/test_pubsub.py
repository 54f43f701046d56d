"""The pub/sub helper (`sobot_panel.redis.pubsub`): the bookkeeping as a property (any interleaving of
listeners arriving and leaving, commands in flight and lost connections converges), and the reader
against a real redis-server that the test kills."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sobot_panel.redis import EmbeddedRedis, connect
from sobot_panel.redis.pubsub import PubSubReader, Subscriptions

FIXED = "fixed"
CHANNELS = st.sampled_from(["a", "b", "c", "d"])


class Bookkeeping(RuleBasedStateMachine):
    """A model of the server beside the bookkeeping. At most one command is in flight (one reader);
    listeners come and go while it is; the connection may drop at any moment."""

    def __init__(self) -> None:
        super().__init__()
        self.subs = Subscriptions([FIXED])
        self.listeners: Counter[str] = Counter()
        self.server: set[str] = set()  # what the server holds
        self.in_flight: tuple[str, frozenset[str]] | None = None

    @rule(channel=CHANNELS)
    def a_listener_arrives(self, channel: str) -> None:
        first = self.subs.acquire(channel)
        self.listeners[channel] += 1
        assert first == (self.listeners[channel] == 1)

    @rule(channel=CHANNELS)
    def a_listener_leaves(self, channel: str) -> None:
        last = self.subs.release(channel)  # also when nobody listens: a no-op, never a negative count
        if self.listeners[channel] > 0:
            self.listeners[channel] -= 1
            assert last == (self.listeners[channel] == 0)
        else:
            assert not last

    @precondition(lambda self: self.in_flight is None)
    @rule()
    def the_reader_sends_a_command(self) -> None:
        add, drop = self.subs.pending()
        if add:
            self.in_flight = ("subscribe", add)
        elif drop:
            self.in_flight = ("unsubscribe", drop)

    @precondition(lambda self: self.in_flight is not None)
    @rule()
    def the_command_goes_out(self) -> None:
        assert self.in_flight is not None
        kind, channels = self.in_flight
        self.in_flight = None
        if kind == "subscribe":
            self.server |= channels
            self.subs.subscribed_to(channels)
        else:
            self.server -= channels
            self.subs.unsubscribed_from(channels)

    @rule()
    def the_connection_drops(self) -> None:
        self.in_flight = None
        self.server.clear()
        self.subs.lost()

    @invariant()
    def counts_match_the_listeners(self) -> None:
        for channel in "abcd":
            assert self.subs.listeners(channel) == self.listeners[channel] >= 0
        assert self.subs.wanted == {FIXED} | {c for c, n in self.listeners.items() if n > 0}

    @invariant()
    def the_subscribed_set_is_what_the_server_holds(self) -> None:
        if self.in_flight is None:
            assert self.subs.subscribed == self.server

    def teardown(self) -> None:
        """Whatever happened, the reader's loop (send what is pending until nothing is) converges."""
        if self.in_flight is not None:
            self.the_command_goes_out()
        for _ in range(3):  # one subscribe and one unsubscribe at most
            self.the_reader_sends_a_command()
            if self.in_flight is None:
                break
            self.the_command_goes_out()
        assert self.in_flight is None
        assert self.subs.converged
        assert self.server == self.subs.wanted


Bookkeeping.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
test_bookkeeping_converges_whatever_the_interleaving = Bookkeeping.TestCase


# --- the reader against a real redis-server ----------------------------------------------------


@pytest.fixture
async def own_client(own_redis: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    client = connect(own_redis.url)
    yield client
    await client.aclose()


async def until(condition: Callable[[], bool], failure: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, failure
        await asyncio.sleep(0.02)


async def numsub(client: aioredis.Redis, channel: str) -> int:
    try:
        [(_, count)] = await client.pubsub_numsub(channel)
        return int(count)
    except (OSError, aioredis.RedisError):
        return -1


async def until_numsub(client: aioredis.Redis, channel: str, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (seen := await numsub(client, channel)) != count:
        assert time.monotonic() < deadline, f"{channel} has {seen} subscribers, expected {count}"
        await asyncio.sleep(0.02)


async def test_first_listener_subscribes_last_one_unsubscribes(own_client: aioredis.Redis) -> None:
    received: list[tuple[str, str]] = []
    reader = PubSubReader(own_client, name="test", fixed=["always"], on_message=lambda c, d: received.append((c, d)))
    task = asyncio.create_task(reader.run())
    try:
        await asyncio.wait_for(reader.connected.wait(), 10)
        assert await numsub(own_client, "always") == 1
        reader.listen("x")
        reader.listen("x")
        await until_numsub(own_client, "x", 1)
        await own_client.publish("x", "hello")
        await until(lambda: received == [("x", "hello")], f"received {received}")
        reader.unlisten("x")
        await own_client.publish("x", "still listening")
        await until(lambda: len(received) == 2, "a channel with one listener left stopped delivering")
        assert await numsub(own_client, "x") == 1
        reader.unlisten("x")
        await until_numsub(own_client, "x", 0)
        assert reader.subscriptions.subscribed == {"always"}
    finally:
        reader.stop()
        await asyncio.wait_for(task, 5)


async def test_a_redis_restart_resubscribes_catches_up_and_warns_once(
    own_redis: EmbeddedRedis, own_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    connects: list[bool] = []

    async def on_connect(reconnected: bool) -> None:
        connects.append(reconnected)

    reader = PubSubReader(own_client, name="test", on_message=lambda c, d: None, on_connect=on_connect)
    reader.listen("y")
    task = asyncio.create_task(reader.run())
    try:
        await until_numsub(own_client, "y", 1)
        assert connects == [False]
        caplog.set_level(logging.DEBUG, logger="sobot_panel.redis.pubsub")
        await asyncio.to_thread(own_redis.kill)
        # Redis stays away for several attempts (backoff 0.1, 0.2, 0.4, 0.8, 1.0 s ...).
        await until(lambda: reader.failures >= 6, "the reader gave up retrying", timeout=30)
        reader.listen("z")  # a listener arriving during the outage is subscribed once Redis is back
        reader.unlisten("y")  # and one leaving is not
        await asyncio.to_thread(own_redis.start)
        await until_numsub(own_client, "z", 1)
        await until(lambda: connects == [False, True], f"on_connect calls: {connects}")
        assert await numsub(own_client, "y") == 0
        assert reader.reconnects == 1 and reader.failures == 0
    finally:
        reader.stop()
        await asyncio.wait_for(task, 5)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.endswith("pubsub")]
    attempts = [r for r in caplog.records if r.levelno == logging.DEBUG and "attempt" in r.getMessage()]
    # One warning when the outage starts (a second only if it had lasted 30 s), not one per attempt.
    assert len(warnings) == 1 and "connection lost" in warnings[0], warnings
    assert len(attempts) >= 5
    assert any("reconnected after" in r.getMessage() for r in caplog.records)


async def test_a_reconnect_under_a_user_confined_to_its_prefix_resubscribes_and_delivers(
    own_redis: EmbeddedRedis, own_client: aioredis.Redis
) -> None:
    """A deployment whose Redis user may touch only its own prefix, and may not even PING, still comes back
    after a reconnect: the "is Redis serving reads yet" probe names no key, and a refused probe stops nothing."""
    await own_client.execute_command("ACL", "SETUSER", "confined", "on", ">pw", "~acme:*", "&acme:*", "+@all", "-ping")
    confined = connect(own_redis.url.replace("redis://", "redis://confined:pw@", 1))
    connects: list[bool] = []
    received: list[str] = []

    async def on_connect(reconnected: bool) -> None:
        connects.append(reconnected)

    reader = PubSubReader(confined, name="test", on_message=lambda c, d: received.append(d), on_connect=on_connect)
    reader.listen("acme:x")
    task = asyncio.create_task(reader.run())
    try:
        await until_numsub(own_client, "acme:x", 1)
        await own_client.client_kill_filter(_type="pubsub")
        await until(lambda: connects == [False, True], f"on_connect calls: {connects}")
        await until_numsub(own_client, "acme:x", 1)
        await own_client.publish("acme:x", "after the reconnect")
        await until(lambda: received == ["after the reconnect"], f"received {received}")
    finally:
        reader.stop()
        await asyncio.wait_for(task, 5)
        await confined.aclose()
