"""Keeps one company's customer API from hurting anyone else's pages.

Every company has its own HTTP session to its own API; on top of that, `GuardedDirectory` bounds the calls
in flight (a lookup past the bound waits for a free slot at most `wait_s`, then fails as "busy" and the
cache answers with a stale copy when it has one), and a circuit breaker (the `purgatory` package) opens
after `THRESHOLD` failures in a row: for `OPEN_S` seconds lookups fail at once instead of each page
waiting for its own timeout, then one call is let through to see whether the API is back. A slow or
failing API thus costs its own company's pages, never another company's.
"""

from __future__ import annotations

import asyncio

from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState

from ..directory.models import Customer, Directory, UpstreamError

THRESHOLD = 5
OPEN_S = 10.0


class GuardedDirectory:
    def __init__(
        self,
        inner: Directory,
        *,
        tenant: str,
        concurrency: int,
        wait_s: float,
        threshold: int = THRESHOLD,
        open_s: float = OPEN_S,
    ) -> None:
        self.inner = inner
        self._circuit = f"directory:{tenant or 'default'}"
        self._breakers = AsyncCircuitBreakerFactory(default_threshold=threshold, default_ttl=open_s)
        self._slots = asyncio.Semaphore(concurrency)
        self._wait_s = wait_s
        self.in_flight = 0

    async def lookup(self, key: str, value: str) -> Customer | None:
        try:
            async with asyncio.timeout(self._wait_s):
                await self._slots.acquire()
        except TimeoutError:
            raise UpstreamError("busy") from None
        self.in_flight += 1
        try:
            async with await self._breakers.get_breaker(self._circuit):
                return await self.inner.lookup(key, value)
        except OpenedState:
            raise UpstreamError("circuit open") from None
        finally:
            self.in_flight -= 1
            self._slots.release()

    async def close(self) -> None:
        await self.inner.close()
