"""Metrics (Prometheus, one registry per app), structured logs, and the access log.

The access log prints the path without its query string: a query carries signs and identities.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal, TextIO, TypeVar

import aiohttp
import pythonjsonlogger.json
import redis
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__, context

Labelled = TypeVar("Labelled", Counter, Gauge, Histogram)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}
        self.audit_groups_reported: dict[str, set[str]] = {}  # per tenant: the group labels last reported
        # `tenant`: the company a request or event belongs to ("" for the single-company settings); its values
        # are bounded by the configured tenants (an unknown /t/NAME/ is answered before it is counted as one).
        self.requests = Counter(
            "panel_http_requests", "HTTP requests by route, status and tenant", ["route", "status", "tenant"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "panel_http_request_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.sign_failures = Counter(
            "panel_sign_failures", "Requests refused by sign verification, by reason", ["reason", "tenant"],
            registry=self.registry,
        )  # fmt: skip
        self.previous_secret_signs = Counter(
            "panel_sign_previous_secret",
            "Signs verified with PANEL_SECRET_PREVIOUS (a key rotation is over when this stops growing)",
            ["tenant"],
            registry=self.registry,
        )
        self.unsigned_disagreements = Counter(
            "panel_unsigned_disagreements",
            "Verified contexts whose unsigned field contradicted the customer the signed keys chose (ignored)",
            ["surface", "field", "tenant"],
            registry=self.registry,
        )
        self.cache_lookups = Counter(
            "panel_cache_lookups", "Customer look-ups by where they were answered", ["source", "tenant"],
            registry=self.registry,
        )  # fmt: skip
        self.upstream_calls = Counter(
            "panel_upstream_calls", "Calls to the enterprise customer API by outcome", ["outcome", "tenant"],
            registry=self.registry,
        )  # fmt: skip
        self.upstream_latency = Histogram(
            "panel_upstream_seconds", "Latency of the enterprise customer API", ["tenant"], registry=self.registry
        )
        self.sends = Counter(
            "panel_sends",
            "Cards and tickets sent, by kind and result",
            ["kind", "result", "tenant"],
            registry=self.registry,
        )
        self.websockets = Gauge(
            "panel_websockets_open", "Open panel websockets", registry=self.registry, multiprocess_mode="livesum"
        )
        self.resyncs = Counter(
            "panel_resyncs", "Panels resynchronised (each rendered once) after a pub/sub reconnect",
            registry=self.registry,
        )  # fmt: skip
        self.pushes_skipped = Counter(
            "panel_pushes_skipped", "Pushes nobody asked for, skipped: the panel already showed that HTML",
            registry=self.registry,
        )  # fmt: skip
        self.resync_peak = Gauge(
            "panel_resync_peak", "Most panels resynchronised at once (bounded by PANEL_RESYNC_CONCURRENCY)",
            registry=self.registry, multiprocess_mode="max",
        )  # fmt: skip
        # Under `serve --workers N` a gauge file per worker: "livemostrecent" keeps the value a live worker
        # wrote last, and the supervisor's mark_process_dead() drops a dead worker's (with "max", a killed
        # worker's group lag stayed on /metrics after Redis said 0).
        live: Literal["livemostrecent"] = "livemostrecent"
        self.audit_stream_length = Gauge(
            "panel_audit_stream_length", "Entries in the audit stream", ["tenant"], registry=self.registry,
            multiprocess_mode=live,
        )  # fmt: skip
        self.audit_hard_maxlen = Gauge(
            "panel_audit_stream_hard_maxlen", "The audit stream's hard ceiling (PANEL_AUDIT_HARD_MAXLEN)",
            ["tenant"], registry=self.registry, multiprocess_mode=live,
        )  # fmt: skip
        self.audit_dead_letter_length = Gauge(
            "panel_audit_dead_letter_length",
            "Entries in the audit dead-letter stream",
            ["tenant"],
            registry=self.registry,
            multiprocess_mode=live,
        )
        self.audit_group_pending = Gauge(
            "panel_audit_group_pending", "Audit entries delivered to a consumer group and not acked",
            ["group", "tenant"], registry=self.registry, multiprocess_mode=live,
        )  # fmt: skip
        self.audit_group_lag = Gauge(
            "panel_audit_group_lag", "Audit entries not yet delivered to a consumer group", ["group", "tenant"],
            registry=self.registry, multiprocess_mode=live,
        )  # fmt: skip
        self.audit_group_oldest_unacked = Gauge(
            "panel_audit_group_oldest_unacked_seconds",
            "Age of the oldest audit entry a consumer group has not acknowledged (0: none); retention keeps it",
            ["group", "tenant"], registry=self.registry, multiprocess_mode=live,
        )  # fmt: skip
        self.audit_forced_drops = Counter(
            "panel_audit_forced_drops",
            "Audit entries a consumer group had not acknowledged, dropped under PANEL_AUDIT_HARD_MAXLEN",
            ["tenant"],
            registry=self.registry,
        )
        self.audit_spool_records = Gauge(
            "panel_audit_spool_records", "Audit records on local disk waiting for Redis (whole host)",
            ["tenant"], registry=self.registry, multiprocess_mode="livemax",
        )  # fmt: skip
        self.audit_spool_bytes = Gauge(
            "panel_audit_spool_bytes",
            "Bytes of the local audit spool (whole host)",
            ["tenant"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.redis_up = Gauge(
            "panel_redis_up", "1 while Redis answered this replica's last check (readiness or scrape), else 0",
            registry=self.registry, multiprocess_mode=live,
        )  # fmt: skip
        self._register_process_info(self.registry)
        # Websockets and event streams live for minutes to hours: timing them with requests would swamp
        # the request latency histogram.
        self.connection_seconds = Histogram(
            "panel_connection_seconds",
            "Lifetime of long-lived connections (panel websockets, the ops event stream) by route",
            ["route"],
            buckets=(1, 10, 60, 300, 900, 1800, 3600, 7200, 14400, 28800),
            registry=self.registry,
        )

    def _register_process_info(self, registry: CollectorRegistry) -> None:
        ProcessCollector(registry=registry)
        registry.register(BuildInfo())

    def exposition(self) -> bytes:
        """The Prometheus text format. Under `serve --workers N` every worker writes its values to the
        directory prometheus_client's multiprocess mode names (set by the supervisor), and any worker's
        /metrics answers for all of them; otherwise this process's registry."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            # process_* of the worker that answers (they cannot be summed across processes), and the build.
            self._register_process_info(registry)
            return bytes(generate_latest(registry))
        return bytes(generate_latest(self.registry))

    def request_done(
        self, route: str, status: int, seconds: float, *, tenant: str = "", long_lived: bool = False
    ) -> None:
        """Count and time one request (the labelled children looked up once, `child`).

        A websocket or an event stream is timed in its own histogram (its lifetime, not a latency)."""
        if long_lived:
            self.requests.labels(route, str(status), tenant).inc()
            self.connection_seconds.labels(route).observe(seconds)
            return
        self.child(self.requests, route, str(status), tenant).inc()
        self.child(self.latency, route).observe(seconds)

    def child(self, metric: Labelled, *values: str) -> Labelled:
        """`metric.labels(*values)`, looked up once: prometheus_client's own lookup takes a lock and
        checks its arguments on every call, which the hot paths (every page, every lookup) need not pay.
        The label values are bounded sets (routes, statuses, tenants, sources), as they must be anyway."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def observe_upstream(self, seconds: float, outcome: str, *, tenant: str = "") -> None:
        self.upstream_calls.labels(outcome, tenant).inc()
        self.upstream_latency.labels(tenant).observe(seconds)


class BuildInfo(Collector):
    """`sobot_panel_build_info{version,python,aiohttp,redis_py} 1`: which build answers."""

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "sobot_panel_build_info", "The sobot-panel build and its runtime", labels=["version", "python", "aiohttp",
                                                                                      "redis_py"],
        )  # fmt: skip
        family.add_metric([__version__, platform.python_version(), aiohttp.__version__, redis.__version__], 1)
        yield family


def rfc3339(seconds: float) -> str:
    """`2026-11-24T02:00:01.123+00:00`: RFC 3339, UTC, milliseconds."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(pythonjsonlogger.json.JsonFormatter):
    """One JSON object a line: `time` (RFC 3339), `level`, `logger`, `message`, then `request_id` while a
    request is handled, any `extra` fields, and `exc` with a traceback (python-json-logger does the work)."""

    def __init__(self) -> None:
        super().__init__(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger", "exc_info": "exc"},
            json_ensure_ascii=False,
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return rfc3339(record.created)

    def process_log_record(self, log_record: dict[str, Any]) -> dict[str, Any]:
        log_record["level"] = str(log_record.get("level", "")).lower()
        fields = log_record.pop("fields", None)
        if isinstance(fields, dict):
            log_record.update(fields)
        if not log_record.get("request_id"):
            log_record.pop("request_id", None)
        return log_record


class RequestContext(logging.Filter):
    """Puts the id of the request being handled on every record (empty outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = context.REQUEST_ID.get()
        return True


class RateLimit(logging.Filter):
    """A warning repeated within `window_s` (same logger, same message template) is written once; the next
    one after the window says how many were held back (`suppressed`). During a Redis outage every
    reconnecting loop would otherwise write a line a second on every replica."""

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self._clock = clock
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = self._clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.window_s:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.suppressed = last[1]
            record.msg = f"{record.msg} ({last[1]} more like this in the last {now - last[0]:.0f}s)"
        if len(self._seen) > 1024:
            self._seen.clear()
        self._seen[key] = (now, 0)
        return True


LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(log_format: str, level: str | int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RequestContext())
    handler.addFilter(RateLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level, logging.INFO) if isinstance(level, str) else level)
    global _ACCESS_SINK
    _ACCESS_SINK = AccessSink(sys.stderr, as_json=log_format == "json")


class AccessSink:
    """Access lines written in batches: one write per quarter second (or 64 lines) instead of one per
    request through the logging machinery, which cost more than a whole bare aiohttp request. A process
    killed with SIGKILL may lose its last quarter second of access lines; application logs are unaffected."""

    FLUSH_AFTER_S = 0.25
    FLUSH_LINES = 64

    def __init__(self, stream: TextIO, *, as_json: bool) -> None:
        self._stream = stream
        self.as_json = as_json
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        atexit.register(self.flush)

    def write(self, line: str) -> None:
        self._lines.append(line)
        if len(self._lines) >= self.FLUSH_LINES:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self.FLUSH_AFTER_S, self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            text = "\n".join(self._lines) + "\n"
            self._lines.clear()
            with contextlib.suppress(OSError, ValueError):
                self._stream.write(text)
                self._stream.flush()


_ACCESS_SINK: AccessSink | None = None


class AccessLogger(AbstractAccessLogger):
    """method, path (never the query), status, duration, request id.

    Under `serve` the lines go to the batched `AccessSink`; elsewhere (tests, embedding apps) through
    the `aiohttp.access` logger."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, elapsed: float) -> None:
        request_id = response.headers.get("X-Request-Id", "")
        sink = _ACCESS_SINK
        if sink is None:
            fields = {"method": request.method, "path": request.path, "status": response.status,
                      "ms": round(elapsed * 1000, 2), "request_id": request_id}  # fmt: skip
            self.logger.info("%s %s %s %.1fms", request.method, request.path, response.status, elapsed * 1000,
                             extra={"fields": fields})  # fmt: skip
            return
        if sink.as_json:
            sink.write(json.dumps({"time": rfc3339(time.time()), "level": "info", "logger": "aiohttp.access",
                                   "message": f"{request.method} {request.path} {response.status}",
                                   "method": request.method, "path": request.path, "status": response.status,
                                   "ms": round(elapsed * 1000, 2), "request_id": request_id},
                                  ensure_ascii=False))  # fmt: skip
        else:
            stamp = _stamp()
            sink.write(f"{stamp} INFO aiohttp.access: {request.method} {request.path} {response.status} "
                       f"{elapsed * 1000:.1f}ms {request_id}")  # fmt: skip


_STAMP: tuple[int, str] = (0, "")


def _stamp() -> str:
    """The local time to the second, formatted once a second rather than once a line."""
    global _STAMP
    now = int(time.time())
    if now != _STAMP[0]:
        _STAMP = (now, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)))
    return _STAMP[1]


def monotonic() -> float:
    return time.perf_counter()
