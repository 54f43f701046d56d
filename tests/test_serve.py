"""`sobot-panel serve --workers N`: N processes on one port, and SIGTERM draining every one of them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
from aiohttp import WSMsgType
from sobot_panel.protocol.surfaces import build_query_string
from sobot_panel.redis import EmbeddedRedis

from .conftest import SECRET, SYSNUM
from .helpers.live import boot_of, open_socket, workbench_fields


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_two_workers_serve_one_port_and_drain_on_sigterm(tmp_path: Path, redis_server: EmbeddedRedis) -> None:
    port = _free_port()
    env = {**os.environ, "PANEL_SYSNUM": SYSNUM, "PANEL_SECRET": SECRET, "PANEL_REDIS_URL": redis_server.url,
           "PANEL_PORT": str(port), "PANEL_DATA_DIR": str(tmp_path), "PANEL_SESSION_KEY": "shared-key-" * 3,
           "PANEL_LOG_FORMAT": "json"}  # fmt: skip
    grace = 6.0
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "sobot_panel", "serve", "--workers", "2", "--grace", str(grace)],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        pids, codes, drained_after = asyncio.run(_exercise(port, supervisor))
        assert len(pids) == 2 and supervisor.pid not in pids
        assert codes and all(code == 1001 for code in codes), codes
        assert drained_after < grace
        assert supervisor.returncode == 0
        # PANEL_LOG_FORMAT=json: one JSON object per line; access lines carry a request id, never a query.
        assert supervisor.stderr is not None
        lines = [json.loads(line) for line in supervisor.stderr.read().decode().splitlines() if line.startswith("{")]
        access = [line for line in lines if line.get("path") == "/embed/workbench"]
        assert access and all(len(line["request_id"]) >= 8 for line in access)
        assert all("sign=" not in json.dumps(line) for line in lines)
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        supervisor.wait(timeout=10)


async def _exercise(port: int, supervisor: subprocess.Popen[bytes]) -> tuple[set[int], list[int | None], float]:
    base = f"http://127.0.0.1:{port}"
    pids: set[int] = set()
    asked = 0
    deadline = time.monotonic() + 60
    # New connections spread over the workers (SO_REUSEPORT); keep asking until both have answered.
    while len(pids) < 2:
        assert supervisor.poll() is None, supervisor.stderr.read().decode() if supervisor.stderr else ""
        assert time.monotonic() < deadline, f"only {pids} answered"
        try:
            async with aiohttp.ClientSession() as session, session.get(f"{base}/healthz") as response:
                pids.add(int((await response.json())["pid"]))
                asked += 1
        except aiohttp.ClientError:
            await asyncio.sleep(0.05)
    # Metrics add up across workers: every /healthz answer above is counted once, whoever serves /metrics.
    for _ in range(12):
        async with aiohttp.ClientSession() as session, session.get(f"{base}/healthz") as response:
            assert response.status == 200
            asked += 1
    async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as response:
        exposition = await response.text()
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines()
                  if line.startswith('panel_http_requests_total{route="/healthz",status="200",tenant=""}'))  # fmt: skip
    assert counted == asked  # one process alone would have counted only its own share
    async with aiohttp.ClientSession() as session:
        sockets = []
        for _ in range(8):  # fresh connections, so the panels land on both workers
            async with aiohttp.ClientSession() as page_session:
                url = f"{base}/embed/workbench?{build_query_string(workbench_fields('C1001'))}"
                async with page_session.get(url) as page:
                    token = boot_of(await page.text())["token"]
            sockets.append(await open_socket(session, f"{base}/ws", token))
        signalled = time.monotonic()
        supervisor.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        for ws in sockets:
            message = await ws.receive(timeout=10)
            assert message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED), message
            codes.append(message.data if message.type is WSMsgType.CLOSE else ws.close_code)
        while supervisor.poll() is None:
            assert time.monotonic() - signalled < 30, "supervisor did not exit"
            await asyncio.sleep(0.05)
        return pids, codes, time.monotonic() - signalled


def test_a_killed_supervisor_takes_its_workers_with_it(tmp_path: Path, redis_server: EmbeddedRedis) -> None:
    """SIGKILL leaves no signal handler to forward anything: the workers learn it from the kernel."""
    port = _free_port()
    env = {**os.environ, "PANEL_SYSNUM": SYSNUM, "PANEL_SECRET": SECRET, "PANEL_REDIS_URL": redis_server.url,
           "PANEL_PORT": str(port), "PANEL_DATA_DIR": str(tmp_path),
           "PANEL_SESSION_KEY": "shared-key-" * 3}  # fmt: skip
    supervisor = subprocess.Popen([sys.executable, "-m", "sobot_panel", "serve", "--workers", "2"], env=env,
                                  cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 60
        while len(pids) < 2:
            assert time.monotonic() < deadline, f"two workers never answered (saw {pids})"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    pids.add(int(json.loads(response.read())["pid"]))
            except OSError:
                time.sleep(0.05)
        supervisor.kill()
        supervisor.wait(10)
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in pids):
            assert time.monotonic() < deadline, (
                f"workers {sorted(p for p in pids if _alive(p))} outlived the supervisor"
            )
            time.sleep(0.05)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        supervisor.wait(timeout=10)


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return False
