"""The embedded redis-server dies with its parent and never shares its data directory with another one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from sobot_panel.redis import DataDirBusy, EmbeddedRedis

from .helpers.net import free_port, wait_http


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status  # exited; waiting for init to reap it


def _wait_gone(pid: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        assert time.monotonic() < deadline, f"redis-server {pid} is still running"
        time.sleep(0.05)


def _serve(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANEL_")}
    env.update(PANEL_DEMO="1", PANEL_PORT=str(port), PANEL_DATA_DIR=str(data_dir))
    return subprocess.Popen([sys.executable, "-m", "sobot_panel", "serve"], env=env, cwd=data_dir.parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_sigkilled_service_leaves_no_redis_server_behind_and_starts_again(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    port = free_port()
    service = _serve(data_dir, port)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=30, process=service)
        redis_pid = int((data_dir / "redis" / "redis.lock").read_text())
        assert not _gone(redis_pid)
        service.send_signal(signal.SIGKILL)
        service.wait(timeout=10)
        _wait_gone(redis_pid)
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
    # The next start on the same directory gets its own server (the old one is gone, its lock released).
    port = free_port()
    again = _serve(data_dir, port)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=30, process=again)
        new_pid = int((data_dir / "redis" / "redis.lock").read_text())
        assert new_pid != redis_pid and not _gone(new_pid)
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(timeout=30)
    _wait_gone(new_pid)


def test_a_second_server_on_a_live_data_directory_is_refused(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path / "redis")
    first.start()
    try:
        second = EmbeddedRedis(tmp_path / "redis")
        with pytest.raises(DataDirBusy, match=f"pid {first.process.pid if first.process else ''}"):
            second.spawn(lock_wait_s=0.2)
        with redis.Redis(unix_socket_path=str(first.socket_path)) as client:
            assert client.ping(), "the live server's socket was left alone"
    finally:
        first.stop()
    second.start()  # once the first is gone the directory is free
    second.stop()
