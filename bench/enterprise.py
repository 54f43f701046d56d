"""The enterprise's customer API for the call-center bench: tests/fake_enterprise.py, more customers, remote knobs.

    python -m bench.enterprise PORT [--customers N] [--latency S]

Serves `GET /customers/lookup` exactly as the test fake does (same code), over `customers(N)`: the sample
customers cloned with fresh partnerId, phone, email, uid and unionId. `POST /_control` with JSON
`{"latency": seconds, "fail_with": status | null}` turns the knobs while it runs; `GET /_stats` counts calls.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from typing import Any

from aiohttp import web

from service.directory.sample import SAMPLE_FILE

TOKEN = "bench-enterprise-token"


def customers(count: int) -> list[dict[str, Any]]:
    """`count` customers in the API's shape: partnerId P000000, P000001, ... (clones of the sample ones)."""
    sample = json.loads(SAMPLE_FILE.read_text(encoding="utf-8"))["customers"]
    out = []
    for index in range(count):
        customer = copy.deepcopy(sample[index % len(sample)])
        customer.update(partnerId=f"P{index:06d}", phone=f"139{index:08d}", email=f"c{index}@bench.example.cn",
                        uid=f"bu-{index}", unionId=f"bench-union-{index}")  # fmt: skip
        out.append(customer)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.enterprise")
    parser.add_argument("port", type=int)
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    # The test fake itself (its lookup, auth and knobs), with a bigger population and an index.
    from tests.fake_enterprise import FakeEnterprise

    fake = FakeEnterprise(token=TOKEN)
    fake.customers = customers(args.customers)
    index: dict[tuple[str, str], dict[str, Any]] = {}
    for customer in fake.customers:
        for key in ("partnerId", "phone", "email", "uid", "unionId"):
            value = str(customer.get(key, ""))
            index.setdefault((key, value.casefold() if key == "email" else value), customer)
    fake.find = lambda key, value: index.get((key, value.casefold() if key == "email" else value))  # type: ignore[method-assign]
    fake.latency = args.latency

    async def control(request: web.Request) -> web.Response:
        knobs = await request.json()
        if "latency" in knobs:
            fake.latency = float(knobs["latency"])
        if "fail_with" in knobs:
            fake.fail_with = knobs["fail_with"]
        return web.json_response({"latency": fake.latency, "fail_with": fake.fail_with})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"calls": fake.total_calls, "pid": os.getpid()})

    app = fake.app()
    app.router.add_post("/_control", control)
    app.router.add_get("/_stats", stats)
    app.router.add_get("/healthz", stats)
    try:
        import uvloop
    except ImportError:
        pass
    else:
        import asyncio

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
