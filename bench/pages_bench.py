"""Verified page loads per second against a bare aiohttp handler, measured in the same run.

    python -m bench pages [--seconds 6] [--rounds 3] [--connections 50]

Scenarios, each at 50 connections: the bare handler; the naive baseline (md5 + one Redis GET + a
Jinja2 render of a 40-line template, bench/naive.py); a hot panel (the same customer again and again,
so an in-process cache hit); the customer from Redis (PANEL_LOCAL_CACHE_TTL=0; the service's
single-flight shares one Redis GET among concurrent loads of one customer, so the "Redis cmds/req"
column says how many it really made); the 12 sample customers in turn with the tier off; a refused
forged sign; and the hot and Redis scenarios again under `serve --workers 2`. Every server runs
for the whole bench and the scenarios take turns in `--rounds` rounds (each round gives each scenario
seconds/rounds), so a noisy neighbour hits them all alike; the table shows the median round and the
spread of req/s. The signed URL is reused for the whole run, so the service runs with
PANEL_SIGN_MAX_AGE=86400.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import urllib.request
from contextlib import ExitStack

from redis import Redis as SyncRedis
from sobot_panel.directory.sample import load_customers

from .common import (
    LONG_SIGN_AGE,
    RESULTS,
    Load,
    dump_json,
    free_port,
    helper,
    load,
    machine,
    raise_fd_limit,
    ratio,
    redis_server,
    render_table,
    service,
    signed_query,
)

PARTNERS = [customer.partnerId for customer in load_customers()]


def _size(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return len(response.read())
    except OSError as error:
        return -getattr(error, "code", 1)


def _median(results: list[Load]) -> Load:
    middle = sorted(results, key=lambda r: r.requests_per_s)[len(results) // 2]
    return Load(middle.requests_per_s, statistics.median(r.p50_ms for r in results),
                statistics.median(r.p99_ms for r in results), sum(r.errors for r in results),
                sum(r.requests for r in results), middle.tool)  # fmt: skip


def run(seconds: float, rounds: int, connections: int) -> dict[str, object]:
    path = f"/embed/workbench?{signed_query('C1001')}"
    many = [f"/embed/workbench?{signed_query(partner)}" for partner in PARTNERS]
    scenarios: list[tuple[str, str, int, list[str]]] = []  # name, url, expected status, paths in turn
    with redis_server() as redis, ExitStack() as servers:
        base, _ = servers.enter_context(helper("bare"))
        scenarios.append(("bare aiohttp handler", f"{base}/", 200, []))
        base, _ = servers.enter_context(helper("naive", redis.url))
        scenarios.append(("naive: md5 + Redis GET + Jinja2 (40 lines)", f"{base}{path}", 200, []))
        for workers in (1, 2):
            label = "1 worker" if workers == 1 else f"--workers {workers}"
            hot, cold = free_port(), free_port()
            servers.enter_context(service(hot, redis.url, workers=workers))
            servers.enter_context(service(cold, redis.url, workers=workers, PANEL_LOCAL_CACHE_TTL="0"))
            scenarios.append((f"hot panel (in-process cache), {label}", f"http://127.0.0.1:{hot}{path}", 200, []))
            scenarios.append((f"customer from Redis (local tier off), {label}", f"http://127.0.0.1:{cold}{path}",
                              200, []))  # fmt: skip
            if workers == 1:
                scenarios.append((f"12 customers in turn, local tier off, {label}", f"http://127.0.0.1:{cold}/",
                                  200, many))  # fmt: skip
                forged = f"http://127.0.0.1:{hot}{path}".replace("sign=", "sign=0")
                scenarios.append((f"forged sign refused (403), {label}", forged, 403, []))
        sizes = {name: _size(url + (paths[0][1:] if paths else "")) for name, url, _, paths in scenarios}
        for _, url, expect, paths in scenarios:
            load(url, seconds=1, connections=connections, expect=expect, paths=paths)  # warm-up
        results: dict[str, list[Load]] = {name: [] for name, *_ in scenarios}
        commands: dict[str, int] = dict.fromkeys(results, 0)
        counter = SyncRedis.from_url(redis.url)
        for round_ in range(rounds):
            for name, url, expect, paths in scenarios:
                before = int(counter.info("stats")["total_commands_processed"])
                results[name].append(load(url, seconds=seconds / rounds, connections=connections, expect=expect,
                                          paths=paths))  # fmt: skip
                commands[name] += int(counter.info("stats")["total_commands_processed"]) - before - 1
            print(f"  round {round_ + 1}/{rounds}: "
                  + ", ".join(f"{r[-1].requests_per_s:,.0f}" for r in results.values()), file=sys.stderr,
                  flush=True)  # fmt: skip
    rows = [(name, _median(runs), runs) for name, runs in results.items()]
    per_page = {name: commands[name] / max(1, sum(x.requests for x in results[name])) for name in results}
    baseline = rows[0][1]
    print(render_table(
        ["scenario", "req/s", "vs bare", "req/s range", "p50 ms", "p99 ms", "p50 vs bare", "Redis cmds/req",
         "errors"],
        [(name, r.requests_per_s, f"{r.requests_per_s / baseline.requests_per_s:.0%}",
          f"{min(x.requests_per_s for x in runs):,.0f}-{max(x.requests_per_s for x in runs):,.0f}",
          r.p50_ms, r.p99_ms, ratio(r.p50_ms, baseline.p50_ms), f"{per_page[name]:.2f}", r.errors)
         for name, r, runs in rows],
    ))  # fmt: skip
    print(f"\n{connections} connections; {rounds} interleaved rounds of {seconds / rounds:.0f} s per scenario, "
          f"median round shown; tool: {baseline.tool}; PANEL_SIGN_MAX_AGE={LONG_SIGN_AGE} (one signed URL reused); "
          "page bytes: " + ", ".join(f"{size}" for size in sizes.values()))  # fmt: skip
    return {"bench": "pages", "machine": machine(), "connections": connections, "seconds": seconds, "rounds": rounds,
            "rows": [{"scenario": name, **vars(r), "bytes": sizes[name], "redis_commands_per_request": per_page[name],
                      "rounds": [vars(x) for x in runs]}
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
