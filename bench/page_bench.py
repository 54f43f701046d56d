"""Verified page loads per second against a bare aiohttp handler, measured in the same run.

    python -m bench page            (or: make bench)

Scenarios: the bare handler; a hot panel (customer in the in-process tier); the same with the
in-process tier off (one Redis GET per load); a refused forged sign (verification + error page).
"""

from __future__ import annotations

import sys
import time

from service.signing import SignPolicy, sign_fields
from service.surfaces import Surface, build_query_string

from .common import Load, free_port, load, process, redis_server, service, table

POLICY = SignPolicy(sys_num="bench", secret="bench-secret", wecom_secret=None, max_age_s=86400)


def signed_query(partner_id: str = "C1001") -> str:
    fields = {"partnerId": partner_id, "email": "agent@bench.cn", "uid": "u1", "cid": "c1"}
    return build_query_string(sign_fields(Surface.WORKBENCH, fields, POLICY, time.time_ns() // 1_000_000))


def main(argv: list[str]) -> None:
    seconds = float(argv[0]) if argv else 6.0
    rows: list[tuple[str, Load]] = []
    with redis_server() as redis:
        bare_port = free_port()
        with process([sys.executable, "-m", "bench.bare", str(bare_port)], {}, f"http://127.0.0.1:{bare_port}/"):
            load(f"http://127.0.0.1:{bare_port}/", seconds=1)
            baseline = load(f"http://127.0.0.1:{bare_port}/", seconds=seconds)
        rows.append(("bare aiohttp handler", baseline))
        query = signed_query()
        port = free_port()
        with service(port, redis.url, PANEL_LOG_FORMAT="text"):
            url = f"http://127.0.0.1:{port}/embed/workbench?{query}"
            load(url, seconds=1)
            rows.append(("hot panel (in-process tier)", load(url, seconds=seconds)))
            forged = url.replace("sign=", "sign=0")
            rows.append(("forged sign refused (403 page)", load(forged, seconds=seconds)))
        port = free_port()
        with service(port, redis.url, PANEL_LOCAL_CACHE_TTL="0"):
            url = f"http://127.0.0.1:{port}/embed/workbench?{query}"
            load(url, seconds=1)
            rows.append(("Redis-cached customer (tier off)", load(url, seconds=seconds)))
    print(table(rows, baseline))


if __name__ == "__main__":
    main(sys.argv[1:])
