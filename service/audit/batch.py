"""Concurrent sends share one Redis round trip: the append script calls queued while the event loop is busy
go out together as one pipeline (one write, one read), and each caller gets its own reply or error.

Nothing is acknowledged early: a caller's future resolves only with Redis's reply to its own script call,
so a send is still told "recorded" only once its record is in the stream. If the round trip fails, every
caller in it gets the error and falls back to the spool on its own, exactly as a single call would (a
record whose write did land is then deduplicated by its idempotency key when the spool is replayed).
The scripts run in queue order, one after another, so two calls with the same id in one batch are a first
write and its duplicate, as they would be one at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from ..redis import RedisClient

# Most calls a pipeline carries: a burst beyond it goes out in several round trips, one after another.
MAX_BATCH = 256

Call = tuple[Sequence[str], Sequence[str | int], "asyncio.Future[Any]"]


class ScriptBatcher:
    """Runs one registered script for many callers, each call's keys and arguments its own."""

    def __init__(self, redis: RedisClient, script: Any) -> None:
        self._redis = redis
        self._script = script  # the registered script: its sha, and its loading when Redis lacks it
        self._queue: list[Call] = []
        self._flushing: asyncio.Task[None] | None = None
        # A Redis Cluster routes each call by its own key's slot: one pipeline would not be one round trip.
        self.enabled = isinstance(redis, Redis)

    async def call(self, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        if not self.enabled:
            return await self._direct(keys, args)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((keys, args, future))
        if self._flushing is None or self._flushing.done():
            # Started now, it runs once this turn of the loop has queued whatever else is ready.
            self._flushing = asyncio.ensure_future(self._flush())
        return await future

    async def _direct(self, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        try:
            return await self._redis.execute_command("EVALSHA", self._script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self._script(keys=keys, args=args)

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                await self._send(batch)
        except BaseException:  # cancelled (shutting down): no caller may wait for a trip that never comes
            queued, self._queue = self._queue, []
            for _, _, future in queued:
                future.cancel()
            raise

    async def _send(self, batch: list[Call]) -> None:
        if len(batch) == 1:
            keys, args, future = batch[0]
            await _settle(future, self._direct(keys, args))
            return
        try:
            replies = await self._round_trip(batch)
        except Exception as error:  # the round trip failed: each caller decides what that means for it
            for _, _, future in batch:
                _resolve(future, exception=error)
            return
        except BaseException:  # cancelled (shutting down): so are its callers
            for _, _, future in batch:
                future.cancel()
            raise
        for (keys, args, future), reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError):  # Redis restarted without the script: load it, then run
                await _settle(future, self._script(keys=keys, args=args))
            elif isinstance(reply, Exception):
                _resolve(future, exception=reply)
            else:
                _resolve(future, result=reply)

    async def _round_trip(self, batch: list[Call]) -> list[Any]:
        """Every call of the batch in one write (packed by hiredis, in C), then each reply in order; an
        error reply is that call's alone. Retried as the client retries a command (a connection error:
        reconnect, after a backoff); running a batch again is safe, its idempotency keys answer for what
        did land. A connection that fails for good is dropped, never handed back half read."""
        pool = self._redis.connection_pool  # type: ignore[union-attr]  # enabled only for a plain client
        sha = self._script.sha
        packed = b"".join(hiredis.pack_command(("EVALSHA", sha, len(keys), *keys, *args)) for keys, args, _ in batch)
        connection = await pool.get_connection()

        async def exchange() -> list[Any]:
            await connection.send_packed_command(packed)
            replies: list[Any] = []
            for _ in batch:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as error:
                    replies.append(error)
            return replies

        async def dropped(_error: Exception) -> None:
            await connection.disconnect()

        try:
            result: list[Any] = await connection.retry.call_with_retry(exchange, dropped)
            return result
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)


async def _settle(future: asyncio.Future[Any], work: Any) -> None:
    try:
        result = await work
    except Exception as error:
        _resolve(future, exception=error)
    else:
        _resolve(future, result=result)


def _resolve(future: asyncio.Future[Any], *, result: Any = None, exception: BaseException | None = None) -> None:
    if future.done():  # its caller was cancelled meanwhile
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)
