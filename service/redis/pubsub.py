"""One reconnecting pub/sub reader for a changing set of channels, in the spirit of encode/broadcaster and
channels_redis: a channel is subscribed when its first listener arrives and unsubscribed when its last
one leaves, one reader owns the connection, and after a lost connection it subscribes afresh to what is
wanted and tells its owner, who catches up on what was missed.

Two parts:

- `Subscriptions`, pure bookkeeping: how many listeners each channel has (what is *wanted*) and what the
  server has been told (what is *subscribed*). The subscribed set is the truth and is changed in one
  place only: after a SUBSCRIBE or UNSUBSCRIBE has gone out, by exactly the channels it named. A listener
  arriving or leaving while that command is on its way is seen by the next comparison, never lost.
- `PubSubReader`, the I/O: one task that reads messages, brings the subscriptions in line whenever they
  change, pings an idle connection (redis-py's PubSub neither reconnects nor raises reliably after its
  connection drops: #2089, #2417), and reconnects with a backoff capped at `backoff_max_s`.

Delivery is at most once: a message published while the reader is away is lost, so owners resynchronise
in `on_connect(reconnected=True)` (the live hub re-renders its panels, the ops feed reads the stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable

from redis.asyncio.client import PubSub
from redis.exceptions import ResponseError

from .clients import REDIS_DOWN, RedisClient, as_text, pubsub_for

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 1.0  # Redis back -> resubscribed (and owners resynchronised) within about a second
POLL_S = 0.05  # how long one read waits: also how soon a new listener's SUBSCRIBE goes out
PING_EVERY_S = 5.0  # an idle connection is pinged: a dead one shows itself here, not by silence
WARN_EVERY_S = 30.0  # during an outage: one warning when it starts, then at most one per this period


class Subscriptions:
    """Listener counts per channel and the channels the server has been told about. Pure: no I/O.

    `fixed` channels are always wanted (the reader's own, such as the invalidations channel).
    """

    def __init__(self, fixed: Iterable[str] = ()) -> None:
        self._fixed = frozenset(fixed)
        self._listeners: Counter[str] = Counter()
        self._subscribed: set[str] = set()

    # listeners ---------------------------------------------------------------------------------

    def acquire(self, channel: str) -> bool:
        """One more listener; True when it is the first (the channel is now wanted)."""
        self._listeners[channel] += 1
        return self._listeners[channel] == 1

    def release(self, channel: str) -> bool:
        """One listener fewer; True when it was the last. Releasing a channel nobody holds is a no-op."""
        if self._listeners[channel] <= 0:
            del self._listeners[channel]
            return False
        self._listeners[channel] -= 1
        if self._listeners[channel] == 0:
            del self._listeners[channel]
            return True
        return False

    def listeners(self, channel: str) -> int:
        return self._listeners.get(channel, 0)

    @property
    def wanted(self) -> frozenset[str]:
        return self._fixed | self._listeners.keys()

    @property
    def subscribed(self) -> frozenset[str]:
        return frozenset(self._subscribed)

    # the server --------------------------------------------------------------------------------

    def pending(self) -> tuple[frozenset[str], frozenset[str]]:
        """What to subscribe to and what to unsubscribe from, to bring the server in line right now."""
        wanted = self.wanted
        return frozenset(wanted - self._subscribed), frozenset(self._subscribed - wanted)

    @property
    def converged(self) -> bool:
        return self._subscribed == self.wanted

    def subscribed_to(self, channels: Iterable[str]) -> None:
        """A SUBSCRIBE naming these channels went out."""
        self._subscribed.update(channels)

    def unsubscribed_from(self, channels: Iterable[str]) -> None:
        """An UNSUBSCRIBE naming these channels went out."""
        self._subscribed.difference_update(channels)

    def lost(self) -> None:
        """The connection is gone, and with it every subscription it held."""
        self._subscribed.clear()


MessageHandler = Callable[[str, str], None]
ConnectHandler = Callable[[bool], Awaitable[None]]


class Router:
    """Hands one reader's messages to their owners, so one reader (one Redis connection) serves the live hub
    and every company's ops feed: by exact channel, else by the longest registered prefix. Pure: no I/O."""

    def __init__(self) -> None:
        self._exact: dict[str, MessageHandler] = {}
        self._prefixes: dict[str, MessageHandler] = {}
        self._connect: dict[object, ConnectHandler] = {}

    def on_channel(self, channel: str, handler: MessageHandler) -> None:
        self._exact[channel] = handler

    def on_prefix(self, prefix: str, handler: MessageHandler) -> None:
        self._prefixes[prefix] = handler

    def forget(self, *names: str, handler: MessageHandler | None = None) -> None:
        """Drop the handlers of these channels and prefixes (with `handler`: only while it is that one, so an
        owner that was replaced never drops its successor's)."""
        for name in names:
            for table in (self._exact, self._prefixes):
                if name in table and (handler is None or table[name] == handler):
                    del table[name]

    def on_connect(self, owner: object, handler: ConnectHandler) -> None:
        self._connect[owner] = handler

    def forget_owner(self, owner: object) -> None:
        self._connect.pop(owner, None)

    def message(self, channel: str, data: str) -> None:
        handler = self._exact.get(channel)
        if handler is None:
            matching = [prefix for prefix in self._prefixes if channel.startswith(prefix)]
            handler = self._prefixes[max(matching, key=len)] if matching else None
        if handler is not None:
            handler(channel, data)

    async def connected(self, reconnected: bool) -> None:
        for handler in list(self._connect.values()):
            try:
                await handler(reconnected)
            except REDIS_DOWN:
                raise  # the reader reconnects and tells everyone again
            except Exception:
                log.exception("a pub/sub owner failed to catch up")


class PubSubReader:
    """Subscribe on the first listener, unsubscribe on the last, one reconnecting reader.

    `on_message(channel, data)` is called for every message, in order, and must not block (spawn work).
    `on_connect(reconnected)` runs once the channels are subscribed: `False` the first time, `True` after
    every reconnect (catch up then: what was published meanwhile is lost).
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        name: str,
        on_message: MessageHandler,
        on_connect: ConnectHandler | None = None,
        fixed: Iterable[str] = (),
        backoff_max_s: float = BACKOFF_MAX_S,
        poll_s: float = POLL_S,
        ping_every_s: float = PING_EVERY_S,
        warn_every_s: float = WARN_EVERY_S,
    ) -> None:
        self._redis = redis
        self.name = name
        self._on_message = on_message
        self._on_connect = on_connect
        self.subscriptions = Subscriptions(fixed)
        self._backoff_max_s = backoff_max_s
        self._poll_s = poll_s
        self._ping_every_s = ping_every_s
        self._warn_every_s = warn_every_s
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()
        self.connected = asyncio.Event()  # set while subscribed; tests and readiness may wait on it
        self.reconnects = 0  # successful reconnects after a loss
        self.failures = 0  # failed attempts in the current outage (0 while connected)

    # listeners ---------------------------------------------------------------------------------

    def listen(self, channel: str) -> None:
        """One more listener for `channel`; the first one makes the reader subscribe."""
        if self.subscriptions.acquire(channel):
            self._changed.set()

    def unlisten(self, channel: str) -> None:
        """One listener fewer for `channel`; the last one makes the reader unsubscribe."""
        if self.subscriptions.release(channel):
            self._changed.set()

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # the reader --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Read until stopped; survive Redis going away by reconnecting and resubscribing."""
        delay = BACKOFF_START_S
        first = True
        outage_started = 0.0
        last_warning = 0.0
        while not self.stopping:
            pubsub = pubsub_for(self._redis)
            try:
                self.subscriptions.lost()  # a fresh connection holds nothing yet
                await self._reconcile(pubsub)
                if not first:
                    await self._until_serving()
                if self._on_connect is not None:
                    await self._on_connect(not first)
                if self.failures:
                    log.info("%s: pub/sub reconnected after %.1fs (%d attempts); %d channels subscribed",
                             self.name, time.monotonic() - outage_started, self.failures,
                             len(self.subscriptions.subscribed))  # fmt: skip
                if not first:
                    self.reconnects += 1
                first = False
                self.failures, delay = 0, BACKOFF_START_S
                self.connected.set()
                await self._pump(pubsub)
            except asyncio.CancelledError:
                raise
            except REDIS_DOWN as error:
                self.connected.clear()
                now = time.monotonic()
                self.failures += 1
                if self.failures == 1:
                    outage_started = last_warning = now
                    log.warning("%s: pub/sub connection lost (%s); reconnecting", self.name, type(error).__name__)
                elif now - last_warning >= self._warn_every_s:
                    last_warning = now
                    log.warning("%s: pub/sub still down after %.0fs (%d attempts; %s)", self.name,
                                now - outage_started, self.failures, type(error).__name__)  # fmt: skip
                else:
                    log.debug("%s: pub/sub reconnect attempt %d failed (%s)", self.name, self.failures, error)
                await self._pause(delay)
                delay = min(delay * 2, self._backoff_max_s)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
        self.connected.clear()

    async def _until_serving(self) -> None:
        """Before owners catch up after a reconnect: the idle pooled connections of the shared client went
        down with the old server (each would fail its next command once, sending the cache around Redis for
        a second), so they are dropped; and SUBSCRIBE works while a restarted Redis still loads its data,
        reads do not (LOADING, raised here so the loop retries with its backoff). PING is refused while
        loading as reads are, and names no key, so an ACL confined to this deployment's prefix allows it."""
        pool = getattr(self._redis, "connection_pool", None)  # a Cluster client heals per node on its own
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.disconnect(inuse_connections=False)
        try:
            await self._redis.ping()  # LOADING is a BusyLoadingError, a ConnectionError: retried by `run`
        except ResponseError as error:  # not allowed to ask (an ACL without PING): no reason to stop reading
            log.debug("%s: serving probe refused (%s)", self.name, type(error).__name__)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _reconcile(self, pubsub: PubSub) -> None:
        """Bring the server in line with what is wanted, one command at a time, re-reading the wish after
        each: a listener that came or went while a command was on its way is handled by the next one."""
        self._changed.clear()
        while True:
            add, drop = self.subscriptions.pending()
            if add:
                await pubsub.subscribe(*sorted(add))
                self.subscriptions.subscribed_to(add)
            elif drop:
                await pubsub.unsubscribe(*sorted(drop))
                self.subscriptions.unsubscribed_from(drop)
            else:
                return

    async def _pump(self, pubsub: PubSub) -> None:
        idle = 0.0
        # redis-py's get_message(timeout=) can swallow a cancellation, so the loop also checks a flag.
        while not self.stopping:
            if self._changed.is_set():
                await self._reconcile(pubsub)
            message = await pubsub.get_message(timeout=self._poll_s)
            if message is None:
                idle += self._poll_s
                if idle >= self._ping_every_s:
                    await pubsub.ping()
                    idle = 0.0
                continue
            idle = 0.0
            if message.get("type") != "message":
                continue
            try:
                self._on_message(as_text(message["channel"]), as_text(message["data"]))
            except Exception:
                log.exception("%s: a pub/sub message handler failed", self.name)
