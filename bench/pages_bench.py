"""Verified page loads per second against a bare aiohttp handler, measured in the same run.

    python -m bench pages [--seconds 6] [--rounds 3] [--connections 50]

Scenarios, each at 50 connections: two floors, the bare handler returning 2 bytes and the bare handler
returning the panel page's own bytes and headers (`Cache-Control`, the CSP and the other security
headers, fetched once from the hot service at start-up; bench/bare.py `/page`); the naive baseline
(md5 + one Redis GET + a Jinja2 render of a 40-line template, bench/naive.py); a hot panel (the same
customer again and again, so an in-process cache hit); the customer from Redis (PANEL_LOCAL_CACHE_TTL=0;
the service's single-flight shares one Redis GET among concurrent loads of one customer, so the "Redis
cmds/req" column says how many it really made); the 12 sample customers in turn with the tier off; a
refused forged sign; and the hot and Redis scenarios again under `serve --workers 2`. Every server runs
for the whole bench and the scenarios take turns in `--rounds` rounds (each round gives each scenario
seconds/rounds), so a noisy neighbour hits them all alike; the table shows the median round and the
spread of req/s. Every row is given against both floors, with the CPU time its server process (and its
workers) used per request, from /proc over the measured windows. The signed URL is reused for the whole
run, so the service runs with PANEL_SIGN_MAX_AGE=86400.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack

from redis import Redis as SyncRedis
from sobot_panel.directory.sample import load_customers

from .common import (
    LOGS,
    LONG_SIGN_AGE,
    RESULTS,
    Load,
    children,
    cpu_seconds,
    dump_json,
    free_port,
    helper,
    load,
    machine,
    raise_fd_limit,
    redis_server,
    render_table,
    service,
    signed_query,
)

PARTNERS = [customer.partnerId for customer in load_customers()]
BARE = "bare aiohttp handler, 2 bytes"
SAME_BYTES = "bare aiohttp handler, the page's own bytes"
HOT = "hot panel (in-process cache)"
MANY = "12 customers in turn, local tier off"


def _size(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return len(response.read())
    except OSError as error:
        return -getattr(error, "code", 1)


# Hop-by-hop and per-response headers aiohttp writes itself; everything else the page carries is copied.
_OWN_HEADERS = {"date", "server", "content-length", "transfer-encoding", "connection", "keep-alive"}


def _page_copy(url: str) -> tuple[bytes, dict[str, str]]:
    """One real page from the service: its body and the headers a same-bytes handler must send too."""
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read(), {k: v for k, v in response.headers.items() if k.lower() not in _OWN_HEADERS}


def _pids(proc: subprocess.Popen[bytes]) -> list[int]:
    """A server and its workers (`serve --workers N` forks them), whose CPU time a request costs."""
    return [proc.pid, *children(proc.pid)]


def _cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def _median(results: list[Load]) -> Load:
    middle = sorted(results, key=lambda r: r.requests_per_s)[len(results) // 2]
    return Load(middle.requests_per_s, statistics.median(r.p50_ms for r in results),
                statistics.median(r.p99_ms for r in results), sum(r.errors for r in results),
                sum(r.requests for r in results), middle.tool)  # fmt: skip


def run(seconds: float, rounds: int, connections: int) -> dict[str, object]:
    path = f"/embed/workbench?{signed_query('C1001')}"
    many = [f"/embed/workbench?{signed_query(partner)}" for partner in PARTNERS]
    # name, url, expected status, paths in turn, the server process
    scenarios: list[tuple[str, str, int, list[str], subprocess.Popen[bytes]]] = []
    with redis_server() as redis, ExitStack() as servers:
        base, proc = servers.enter_context(helper("bare"))
        scenarios.append((BARE, f"{base}/", 200, [], proc))
        base, proc = servers.enter_context(helper("naive", redis.url))
        scenarios.append(("naive: md5 + Redis GET + Jinja2 (40 lines)", f"{base}{path}", 200, [], proc))
        for workers in (1, 2):
            label = "1 worker" if workers == 1 else f"--workers {workers}"
            hot, cold = free_port(), free_port()
            hot_proc = servers.enter_context(service(hot, redis.url, workers=workers))
            cold_proc = servers.enter_context(service(cold, redis.url, workers=workers, PANEL_LOCAL_CACHE_TTL="0"))
            scenarios.append((f"{HOT}, {label}", f"http://127.0.0.1:{hot}{path}", 200, [], hot_proc))
            scenarios.append((f"customer from Redis (local tier off), {label}", f"http://127.0.0.1:{cold}{path}",
                              200, [], cold_proc))  # fmt: skip
            if workers == 1:
                scenarios.append((f"{MANY}, {label}", f"http://127.0.0.1:{cold}/", 200, many, cold_proc))
                forged = f"http://127.0.0.1:{hot}{path}".replace("sign=", "sign=0")
                scenarios.append((f"forged sign refused (403), {label}", forged, 403, [], hot_proc))
                # The floor for a page: a bare handler sending this very page's bytes and headers.
                body, headers = _page_copy(f"http://127.0.0.1:{hot}{path}")
                (LOGS / "page.html").write_bytes(body)
                (LOGS / "page-headers.json").write_text(json.dumps(headers))
                base, proc = servers.enter_context(helper("bare", name="bare-page", env={
                    "BENCH_PAGE_FILE": str(LOGS / "page.html"),
                    "BENCH_PAGE_HEADERS": str(LOGS / "page-headers.json")}))  # fmt: skip
                scenarios.insert(1, (SAME_BYTES, f"{base}/page", 200, [], proc))
        sizes = {name: _size(url + (paths[0][1:] if paths else "")) for name, url, _, paths, _ in scenarios}
        for _, url, expect, paths, _ in scenarios:
            load(url, seconds=1, connections=connections, expect=expect, paths=paths)  # warm-up
        results: dict[str, list[Load]] = {name: [] for name, *_ in scenarios}
        commands: dict[str, int] = dict.fromkeys(results, 0)
        cpu: dict[str, float] = dict.fromkeys(results, 0.0)
        counter = SyncRedis.from_url(redis.url)
        for round_ in range(rounds):
            for name, url, expect, paths, proc in scenarios:
                before = int(counter.info("stats")["total_commands_processed"])
                pids = _pids(proc)
                used = _cpu(pids)
                results[name].append(load(url, seconds=seconds / rounds, connections=connections, expect=expect,
                                          paths=paths))  # fmt: skip
                cpu[name] += _cpu(pids) - used
                commands[name] += int(counter.info("stats")["total_commands_processed"]) - before - 1
            print(f"  round {round_ + 1}/{rounds}: "
                  + ", ".join(f"{r[-1].requests_per_s:,.0f}" for r in results.values()), file=sys.stderr,
                  flush=True)  # fmt: skip
    rows = [(name, _median(runs), runs) for name, runs in results.items()]
    served = {name: max(1, sum(x.requests for x in results[name])) for name in results}
    per_page = {name: commands[name] / served[name] for name in results}
    cpu_us = {name: cpu[name] / served[name] * 1e6 for name in results}
    median = {name: r.requests_per_s for name, r, _ in rows}
    bare, floor = median[BARE], median[SAME_BYTES]
    print(render_table(
        ["scenario", "req/s", "vs same bytes", "vs 2 bytes", "CPU µs/req", "req/s range", "p50 ms", "p99 ms",
         "Redis cmds/req", "errors"],
        [(name, r.requests_per_s, f"{r.requests_per_s / floor:.0%}", f"{r.requests_per_s / bare:.0%}",
          f"{cpu_us[name]:.0f}",
          f"{min(x.requests_per_s for x in runs):,.0f}-{max(x.requests_per_s for x in runs):,.0f}",
          r.p50_ms, r.p99_ms, f"{per_page[name]:.2f}", r.errors)
         for name, r, runs in rows],
    ))  # fmt: skip
    print(f"\n{connections} connections; {rounds} interleaved rounds of {seconds / rounds:.0f} s per scenario, "
          f"median round shown; tool: {rows[0][1].tool}; PANEL_SIGN_MAX_AGE={LONG_SIGN_AGE} (one signed URL reused); "
          "CPU µs/req: user+system time of the server process and its workers over the measured windows; "
          "page bytes: " + ", ".join(f"{size}" for size in sizes.values()))  # fmt: skip
    targets = {
        "hot panel vs same bytes (1 worker, target >= 40%)": median[f"{HOT}, 1 worker"] / floor,
        "12 customers, Redis tier, vs same bytes (1 worker, target >= 35%)": median[f"{MANY}, 1 worker"] / floor,
        "hot panel --workers 2 vs 1 worker (target >= 1.8x)":
            median[f"{HOT}, --workers 2"] / median[f"{HOT}, 1 worker"],
    }  # fmt: skip
    for label, value in targets.items():
        print(f"{label}: " + (f"{value:.2f}x" if label.endswith("1.8x)") else f"{value:.0%}"))
    return {"bench": "pages", "machine": machine(), "connections": connections, "seconds": seconds, "rounds": rounds,
            "targets": targets,
            "rows": [{"scenario": name, **vars(r), "bytes": sizes[name], "redis_commands_per_request": per_page[name],
                      "cpu_us_per_request": cpu_us[name], "vs_same_bytes": r.requests_per_s / floor,
                      "vs_bare": r.requests_per_s / bare, "rounds": [vars(x) for x in runs]}
                     for name, r, runs in rows]}  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench pages", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--seconds", type=float, default=6.0, help="per scenario, over all rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="2 s per scenario, 2 rounds")
    parser.add_argument("--out", help="JSON file (default bench/results/pages-<time>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds = 2.0, 2
    raise_fd_limit()
    result = run(args.seconds, max(1, args.rounds), args.connections)
    out = dump_json(args.out or RESULTS / f"pages-{time.strftime('%Y%m%d-%H%M%S')}.json", result)
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
