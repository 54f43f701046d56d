"""Shared pieces of the benchmarks: servers in subprocesses, load generators, /proc readings, tables."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import platform
import re
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from sobot_panel.protocol.signing import SignPolicy, sign_fields
from sobot_panel.protocol.surfaces import Surface, build_query_string
from sobot_panel.redis import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

SYSNUM = "bench"
SECRET = "bench-secret"
SESSION_KEY = "bench-session-key"
API_TOKEN = "bench-api"
OPS_TOKEN = "bench-ops"
LONG_SIGN_AGE = 86_400  # the benches that replay one URL sign it once and set PANEL_SIGN_MAX_AGE this high
POLICY = SignPolicy(sys_num=SYSNUM, secret=SECRET, wecom_secret=None, max_age_s=LONG_SIGN_AGE)
LOGS = Path(tempfile.mkdtemp(prefix="panel-bench-logs-"))
# The servers' logs are shown when one fails to start; BENCH_KEEP_LOGS=1 keeps them all after the run.
if not os.environ.get("BENCH_KEEP_LOGS"):
    atexit.register(shutil.rmtree, LOGS, True)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def signed_fields(partner_id: str, agent: str = "agent@bench.cn", *, at_ms: int | None = None,
                  policy: SignPolicy = POLICY) -> dict[str, str]:  # fmt: skip
    """A workbench context as Sobot signs it (secret mode): partnerId, the agent's email, uid, cid."""
    fields = {"partnerId": partner_id, "email": agent, "uid": f"u-{partner_id}", "cid": f"c-{partner_id}"}
    return sign_fields(Surface.WORKBENCH, fields, policy, now_ms() if at_ms is None else at_ms)


def signed_query(partner_id: str = "C1001", agent: str = "agent@bench.cn", **kwargs: object) -> str:
    return build_query_string(signed_fields(partner_id, agent, **kwargs))  # type: ignore[arg-type]


# --- the machine -------------------------------------------------------------------------------


def raise_fd_limit(wanted: int = 1 << 20) -> int:
    """Lift this process's open-file limit to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else wanted
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def machine() -> dict[str, object]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "kernel": platform.release(), "wrk": bool(shutil.which("wrk"))}  # fmt: skip


def rss_kib(pid: int) -> int:
    """Resident memory of a process (VmRSS), 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def children(pid: int) -> list[int]:
    """Direct children of a process, from /proc/<pid>/task/*/children."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            found.extend(int(child) for child in (task / "children").read_text().split())
    return sorted(set(found))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


# --- statistics --------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of unsorted values (nan when empty)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def summary(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"count": len(ordered), "p50": percentile(ordered, 50), "p95": percentile(ordered, 95),
            "p99": percentile(ordered, 99), "max": ordered[-1] if ordered else float("nan")}  # fmt: skip


def ratio(value: float, base: float) -> str:
    if not base or value != value or base != base:
        return "-"
    return f"{value / base:.2f}x"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain text table: the first column left-aligned, the rest right-aligned."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(str(h)), *(len(row[i]) for row in cells)) if cells else len(str(h))
              for i, h in enumerate(headers)]  # fmt: skip

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(widths[0]) if i == 0 else v.rjust(widths[i]) for i, v in enumerate(values))

    out = [line([str(h) for h in headers]), line(["-" * w for w in widths])]
    out.extend(line(row) for row in cells)
    return "\n".join(out)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.2f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def dump_json(path: Path | str, data: object) -> Path:
    path = Path(path)  # --out arrives as text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=_json_default) + "\n", encoding="utf-8")
    return path


def _json_default(value: object) -> object:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)  # type: ignore[call-overload]
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --- servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status < 500:
                    return
        except urllib.error.HTTPError as error:
            if error.code < 500:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def http_json(url: str, timeout: float = 2.0) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data: dict[str, object] = json.loads(response.read())
        return data


@contextmanager
def redis_server() -> Iterator[EmbeddedRedis]:
    """A real redis-server on a TCP port (AOF on, as the service runs it); `kill()`/`start()` for faults."""
    server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="panel-bench-redis-")), port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def process(args: list[str], env: dict[str, str], health_url: str, *, name: str = "server",
            stop_timeout: float = 20.0) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    """A server subprocess, its output in a log file (shown when it fails to start); SIGTERM at exit."""
    raise_fd_limit()
    log_path = LOGS / f"{name}-{secrets.token_hex(3)}.log"
    # Our environment's PANEL_* settings (and a developer's .env in the work tree) must not leak in: the
    # children run in an empty directory with the repository on PYTHONPATH.
    clean = {name: value for name, value in os.environ.items() if not name.startswith("PANEL_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), clean.get("PYTHONPATH", "")]))
    with log_path.open("wb") as log:
        proc = subprocess.Popen(args, env={**clean, **env}, cwd=LOGS, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_http(health_url, proc=proc)
        except (TimeoutError, RuntimeError) as error:
            raise RuntimeError(f"{name} did not start: {error}\n{_log_tail(log_path)}") from None
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def service_env(port: int, redis_url: str, data_dir: Path | None = None, **extra: str) -> dict[str, str]:
    return {
        "PANEL_SYSNUM": SYSNUM,
        "PANEL_SECRET": SECRET,
        "PANEL_SESSION_KEY": SESSION_KEY,
        "PANEL_REDIS_URL": redis_url,
        "PANEL_SIGN_MAX_AGE": str(LONG_SIGN_AGE),
        "PANEL_PORT": str(port),
        "PANEL_API_TOKEN": API_TOKEN,
        "PANEL_OPS_TOKEN": OPS_TOKEN,
        "PANEL_LOG_FORMAT": "text",
        "PANEL_DATA_DIR": str(data_dir or Path(tempfile.mkdtemp(prefix="panel-bench-data-"))),
        **extra,
    }


@contextmanager
def service(port: int, redis_url: str, *, workers: int = 1, args: Sequence[str] = (),
            **extra: str) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    """`python -m sobot_panel serve [--workers N]`; with N > 1, waits until every worker answers."""
    data_dir = Path(tempfile.mkdtemp(prefix="panel-bench-data-"))
    env = service_env(port, redis_url, data_dir, **extra)
    command = [sys.executable, "-m", "sobot_panel", "serve", *args]
    if workers > 1:
        command += ["--workers", str(workers)]
    health = f"http://127.0.0.1:{port}/healthz"
    try:
        with process(command, env, health, name="service") as proc:
            if workers > 1:
                wait_workers(health, workers)
            yield proc
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def wait_workers(health_url: str, workers: int, timeout: float = 30.0) -> set[int]:
    """Until `workers` distinct pids have answered /healthz (new connections spread over SO_REUSEPORT)."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < workers and time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            pid = http_json(health_url).get("pid")
            if isinstance(pid, int):
                seen.add(pid)
        time.sleep(0.02)
    if len(seen) < workers:
        raise TimeoutError(f"only {len(seen)} of {workers} workers answered within {timeout}s")
    return seen


@contextmanager
def helper(module: str, *args: str, health: str = "/healthz", name: str | None = None,
           env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:  # fmt: skip
    """One of the bench's own small servers (`python -m bench.<module> PORT ...`): yields its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with process([sys.executable, "-m", f"bench.{module}", str(port), *args], env or {}, base + health,
                 name=name or module) as proc:  # fmt: skip
        yield base, proc


# --- HTTP load ---------------------------------------------------------------------------------


@dataclass
class Load:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0
    tool: str = "wrk"


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if match is None:
        return float("nan")
    return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[match.group(2)]


def _find(pattern: str, text: str, default: str = "nan") -> str:
    match = re.search(pattern, text, re.MULTILINE)
    return match.group(1) if match else default


def _lua_string(text: str) -> str:
    level = "=" * 4
    assert f"]{level}]" not in text
    return f"[{level}[{text}]{level}]"


def load(url: str, *, seconds: float = 5, connections: int = 50, method: str = "GET",
         body_template: str | None = None, expect: int | None = None, paths: Sequence[str] = ()) -> Load:  # fmt: skip
    """Closed-loop load at `connections`: wrk when installed (`apt-get install wrk`), else a Python client.

    `body_template`: a POST body in which `@ID@` is replaced by a fresh unique id for every request.
    `expect`: the status every answer should have (default: any 2xx/3xx); others count as errors.
    `paths`: GET these paths (with query) of `url`'s server in turn instead of `url` itself.
    """
    if shutil.which("wrk"):
        return _wrk(url, seconds=seconds, connections=connections, method=method, body_template=body_template,
                    expect=expect, paths=paths)  # fmt: skip
    return _python_load(url, seconds=seconds, connections=connections, method=method, body_template=body_template,
                        expect=expect, paths=paths)  # fmt: skip


_WRK_SCRIPT = """
local counter = 0
local prefix = %(prefix)s
local method = %(method)s
local head, tail = %(head)s, %(tail)s
local expect = %(expect)s
local paths = {%(paths)s}
local turn = 0
local bad = 0
request = function()
  if #paths > 0 then
    turn = turn %% #paths + 1
    return wrk.format(method, paths[turn])
  end
  if head == nil then return wrk.format(method, nil) end
  counter = counter + 1
  return wrk.format(method, nil, {["Content-Type"] = "application/json"}, head .. prefix .. counter .. tail)
end
response = function(status, headers, body)
  if expect ~= 0 and status ~= expect then bad = bad + 1 end
end
done = function(summary, latency, requests)
  io.write(string.format("expect-mismatch: %%d\\n", bad))
end
"""


def _wrk(url: str, *, seconds: float, connections: int, method: str, body_template: str | None,
         expect: int | None, paths: Sequence[str]) -> Load:  # fmt: skip
    head = tail = "nil"
    if body_template is not None:
        before, _, after = body_template.partition("@ID@")
        head, tail = _lua_string(before), _lua_string(after)
    script = _WRK_SCRIPT % {"prefix": _lua_string(f"w{secrets.token_hex(4)}-"), "method": _lua_string(method),
                            "head": head, "tail": tail, "expect": expect or 0,
                            "paths": ", ".join(_lua_string(p) for p in paths)}  # fmt: skip
    # The response() hook costs wrk a little; use it only when a status must be checked.
    if not expect:
        script = script.replace("response = function", "local _unused = function")
    path = LOGS / f"wrk-{secrets.token_hex(3)}.lua"
    path.write_text(script)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(path), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(_find(r"Requests/sec:\s+([\d.]+)", out))
    total = int(_find(r"(\d+) requests in", out, "0"))
    # Anchored: "Req/Sec ... 69.50%" in the thread stats must not pass for the 50% line.
    p50 = _ms(_find(r"^\s+50%\s+(\S+)", out, ""))
    p99 = _ms(_find(r"^\s+99%\s+(\S+)", out, ""))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    if expect:
        errors += int(_find(r"expect-mismatch: (\d+)", out, "0"))
    else:
        errors += int(non2xx.group(1)) if non2xx else 0
    return Load(rps, p50, p99, errors, total, "wrk")


def _python_load(url: str, *, seconds: float, connections: int, method: str, body_template: str | None,
                 expect: int | None, paths: Sequence[str]) -> Load:  # fmt: skip
    import asyncio

    import aiohttp

    prefix = f"p{secrets.token_hex(4)}-"
    origin = "/".join(url.split("/", 3)[:3])

    async def run() -> Load:
        latencies: list[float] = []
        errors = 0
        counter = 0
        deadline = time.monotonic() + seconds

        async def worker(session: aiohttp.ClientSession) -> None:
            nonlocal errors, counter
            while time.monotonic() < deadline:
                counter += 1
                body = body_template.replace("@ID@", f"{prefix}{counter}") if body_template else None
                target = origin + paths[counter % len(paths)] if paths else url
                started = time.perf_counter()
                try:
                    async with session.request(method, target, data=body,
                                               headers={"Content-Type": "application/json"}) as response:  # fmt: skip
                        await response.read()
                        if (response.status != expect) if expect else response.status >= 400:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1
                latencies.append((time.perf_counter() - started) * 1000)

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
            began = time.monotonic()
            await asyncio.gather(*(worker(session) for _ in range(connections)))
            elapsed = time.monotonic() - began
        return Load(len(latencies) / elapsed, percentile(latencies, 50), percentile(latencies, 99), errors,
                    len(latencies), "python")  # fmt: skip

    return asyncio.run(run())


def load_table(rows: list[tuple[str, Load]], baseline: Load, baseline_name: str = "bare") -> str:
    return render_table(
        ["scenario", "req/s", f"vs {baseline_name}", "p50 ms", "p99 ms", "p50 vs", "errors"],
        [(name, r.requests_per_s, f"{r.requests_per_s / baseline.requests_per_s:.0%}", r.p50_ms, r.p99_ms,
          ratio(r.p50_ms, baseline.p50_ms), r.errors) for name, r in rows],
    )  # fmt: skip


def use_uvloop() -> str:
    """Run the bench's own clients on uvloop when it is there (as the service does)."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    import asyncio

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"
