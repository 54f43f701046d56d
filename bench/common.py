"""Shared pieces of the benchmarks: servers in subprocesses, a load generator, a table printer."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from service.redis import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status < 500:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@contextmanager
def redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="panel-bench-")), port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def process(args: list[str], env: dict[str, str], health_url: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, env={**os.environ, **env}, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_http(health_url)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def service(port: int, redis_url: str, **extra: str) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        "PANEL_SYSNUM": "bench",
        "PANEL_SECRET": "bench-secret",
        "PANEL_SESSION_KEY": "bench-session-key",
        "PANEL_REDIS_URL": redis_url,
        "PANEL_SIGN_MAX_AGE": "86400",
        "PANEL_PORT": str(port),
        "PANEL_API_TOKEN": "bench-api",
        **extra,
    }
    with process([sys.executable, "-m", "service", "serve"], env, f"http://127.0.0.1:{port}/healthz") as proc:
        yield proc


@dataclass
class Load:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def load(url: str, *, seconds: float = 6, connections: int = 50) -> Load:
    """wrk when installed (`apt-get install wrk`), else a Python client (slower: ratios still hold)."""
    if shutil.which("wrk"):
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        p50 = _ms(re.search(r"50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
        p99 = _ms(re.search(r"99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        return Load(rps, p50, p99, int(errors.group(1)) if errors else 0)
    return _python_load(url, seconds=seconds, connections=connections)


def _python_load(url: str, *, seconds: float, connections: int) -> Load:
    import asyncio

    import aiohttp

    async def run() -> Load:
        latencies: list[float] = []
        errors = 0
        deadline = time.monotonic() + seconds

        async def worker(session: aiohttp.ClientSession) -> None:
            nonlocal errors
            while time.monotonic() < deadline:
                started = time.perf_counter()
                async with session.get(url) as response:
                    await response.read()
                    if response.status >= 400:
                        errors += 1
                latencies.append((time.perf_counter() - started) * 1000)

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
            began = time.monotonic()
            await asyncio.gather(*(worker(session) for _ in range(connections)))
            elapsed = time.monotonic() - began
        latencies.sort()
        return Load(len(latencies) / elapsed, latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)],
                    errors)  # fmt: skip

    return asyncio.run(run())


def table(rows: list[tuple[str, Load]], baseline: Load) -> str:
    lines = [f"{'scenario':<44} {'req/s':>9} {'vs bare':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"]
    for name, result in rows:
        ratio = result.requests_per_s / baseline.requests_per_s
        lines.append(f"{name:<44} {result.requests_per_s:>9.0f} {ratio:>7.0%} {result.p50_ms:>8.2f} "
                     f"{result.p99_ms:>8.2f} {result.errors:>7}")  # fmt: skip
    return "\n".join(lines)
