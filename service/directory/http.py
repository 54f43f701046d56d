"""The enterprise's own customer API over HTTP: `GET {base}/customers/lookup?{key}={value}`.

One `aiohttp.ClientSession` is opened lazily inside the running loop and reused for every call
(connection pooling, keep-alive); `close()` closes it. The bearer token is never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp
from pydantic import ValidationError

from ..context import upstream_headers
from .models import LOOKUP_NAMES, Customer, UpstreamError

log = logging.getLogger(__name__)

# A customer with a long history is tens of KiB; anything far larger is a broken upstream.
MAX_BODY_BYTES = 4 * 1024 * 1024

OnCall = Callable[[float, str], None]


class HttpDirectory:
    """Calls the customer API; 404 means "nobody", anything else that is not a customer is UpstreamError."""

    def __init__(self, base_url: str, token: str | None, timeout_s: float, on_call: OnCall | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Accept": "application/json", "User-Agent": "sobot-panel"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(1.0, timeout_s), sock_read=timeout_s)
        self._on_call = on_call
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never show the headers (the token)
        return f"HttpDirectory({self.base_url!r})"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                headers=self._headers,
                connector=aiohttp.TCPConnector(limit=100, ttl_dns_cache=300),
            )
        return self._session

    async def lookup(self, key: str, value: str) -> Customer | None:
        if key not in LOOKUP_NAMES:
            raise ValueError(f"unknown lookup key {key!r}; expected one of {', '.join(LOOKUP_NAMES)}")
        started = time.perf_counter()
        outcome = "error"
        try:
            customer = await self._get(key, value)
            outcome = "ok" if customer is not None else "not_found"
            return customer
        except TimeoutError as error:  # before ClientError: ServerTimeoutError is both
            outcome = "timeout"
            raise UpstreamError("timeout") from error
        except aiohttp.ClientError as error:
            raise UpstreamError(f"connection: {type(error).__name__}") from error
        finally:
            elapsed = time.perf_counter() - started
            if outcome in ("error", "timeout"):
                log.warning("customer API %s failed after %.3fs (%s)", self.base_url, elapsed, outcome)
            if self._on_call is not None:
                self._on_call(elapsed, outcome)

    async def _get(self, key: str, value: str) -> Customer | None:
        url = f"{self.base_url}/customers/lookup"
        # The request id and trace context of the panel load that asked, so the upstream's logs join ours.
        async with self._client().get(url, params={key: value}, headers=upstream_headers()) as response:
            if response.status == 404:
                return None
            if response.status != 200:
                raise UpstreamError(f"HTTP {response.status}")
            body = await _read_limited(response)
        try:
            return Customer.model_validate_json(body)
        except ValidationError as error:
            raise UpstreamError(f"invalid answer: {error.error_count()} problem(s)") from error

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
            await asyncio.sleep(0)  # let the connector's transports close before the loop goes


async def _read_limited(response: aiohttp.ClientResponse) -> bytes:
    if response.content_length is not None and response.content_length > MAX_BODY_BYTES:
        raise UpstreamError("answer too large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise UpstreamError("answer too large")
        chunks.append(chunk)
    return b"".join(chunks)
