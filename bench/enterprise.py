"""A faithful fake of the enterprise's customer API (CONTRACT.md, "The enterprise's customer API"), used by
the tests (through `tests/helpers/fake_enterprise.py`) and, with more customers and remote knobs, by the
call-center bench:

    python -m bench.enterprise PORT [--customers N] [--latency S]

`GET /customers/lookup?partnerId=|phone=|email=|uid=|unionId=` answers the customers of
`web/sample/customers.json` exactly as stored (or `customers(N)`: the sample customers cloned with fresh
partnerId, phone, email, uid and unionId), 404 when nobody matches, 401 without the bearer token.
Knobs: `latency` (seconds, a slow upstream), `hold` (an Event every lookup waits for), `fail_with` (an HTTP
status to answer instead), `raw_body` (bytes to answer with 200, e.g. broken JSON), `token` (None: no auth
required); `calls` counts requests per `key:value`; `reset()` puts every knob back. Over HTTP,
`POST /_control` with JSON `{"latency": seconds, "fail_with": status | null}` turns the knobs while it runs;
`GET /_stats` counts calls.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
from collections import Counter
from typing import Any

from aiohttp import web
from sobot_panel.assets import sample_file
from sobot_panel.directory.models import LOOKUP_NAMES

TOKEN = "bench-enterprise-token"


def customers(count: int) -> list[dict[str, Any]]:
    """`count` customers in the API's shape: partnerId P000000, P000001, ... (clones of the sample ones)."""
    sample = json.loads(sample_file("customers.json").read_text(encoding="utf-8"))["customers"]
    out = []
    for index in range(count):
        customer = copy.deepcopy(sample[index % len(sample)])
        customer.update(partnerId=f"P{index:06d}", phone=f"139{index:08d}", email=f"c{index}@bench.example.cn",
                        uid=f"bu-{index}", unionId=f"bench-union-{index}")  # fmt: skip
        out.append(customer)
    return out


class FakeEnterprise:
    def __init__(self, token: str | None) -> None:
        self.customers: list[dict[str, Any]] = json.loads(sample_file("customers.json").read_text(encoding="utf-8"))[
            "customers"
        ]
        self._index: dict[tuple[str, str], dict[str, Any]] | None = None
        self.default_token = token
        self.url = ""
        self.calls: Counter[str] = Counter()
        self.authorizations: list[str | None] = []
        self.reset()

    def reset(self) -> None:
        self.token = self.default_token
        self.latency = 0.0
        self.fail_with: int | None = None
        self.raw_body: bytes | None = None
        self.hold: asyncio.Event | None = None  # while set to an unset Event, every lookup waits for it
        self.calls.clear()
        self.authorizations.clear()

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def use_customers(self, population: list[dict[str, Any]]) -> None:
        """Serve these customers, found through an index (a bench's thousands stay O(1) a lookup)."""
        self.customers = population
        index: dict[tuple[str, str], dict[str, Any]] = {}
        for customer in population:
            for key in ("partnerId", "phone", "email", "uid", "unionId"):
                value = str(customer.get(key, ""))
                if value:
                    index.setdefault((key, value.casefold() if key == "email" else value), customer)
        self._index = index

    def find(self, key: str, value: str) -> dict[str, Any] | None:
        if self._index is not None:
            return self._index.get((key, value.casefold() if key == "email" else value))
        for customer in self.customers:
            stored = str(customer.get(key, ""))
            if stored and (stored.casefold() == value.casefold() if key == "email" else stored == value):
                return customer
        return None

    async def lookup(self, request: web.Request) -> web.Response:
        self.authorizations.append(request.headers.get("Authorization"))
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "unauthorized"}, status=401)
        present = [(name, request.query[name]) for name in LOOKUP_NAMES if request.query.get(name)]
        if not present:
            return web.json_response({"error": "give one of " + ", ".join(LOOKUP_NAMES)}, status=400)
        key, value = present[0]
        self.calls[f"{key}:{value}"] += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.hold is not None:
            await self.hold.wait()
        if self.fail_with is not None:
            return web.json_response({"error": "simulated failure"}, status=self.fail_with)
        if self.raw_body is not None:
            return web.Response(body=self.raw_body, content_type="application/json")
        customer = self.find(key, value)
        if customer is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response(customer)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/customers/lookup", self.lookup)
        return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.enterprise")
    parser.add_argument("port", type=int)
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    # The same fake the tests use (its lookup, auth and knobs), with a bigger population and an index.
    fake = FakeEnterprise(token=TOKEN)
    fake.use_customers(customers(args.customers))
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
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
