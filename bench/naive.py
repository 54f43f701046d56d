"""The naive baseline: what the cheapest possible verified panel costs.

    python -m bench.naive PORT REDIS_URL

One handler: check the workbench sign with md5 (secret mode), one Redis GET of the customer's JSON,
and a Jinja2 render of a 40-line template. No middlewares, no pydantic, no metrics, no token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys

import jinja2
from aiohttp import web
from sobot_panel.redis import connect

from .common import SECRET, SYSNUM

REDIS = web.AppKey("redis", object)
TEMPLATE = jinja2.Environment(autoescape=True).from_string("""<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<title>{{ customer.name }}</title>
</head>
<body>
<main class="panel">
<header>
<h1>{{ customer.name }}</h1>
<p class="level">{{ customer.level }}</p>
<p class="contact">{{ customer.phone }} · {{ customer.email }}</p>
</header>
<section class="tags">
{% for tag in customer.tags %}<span class="tag">{{ tag }}</span>{% endfor %}
</section>
<dl class="attributes">
{% for key, value in customer.attributes.items() %}
<dt>{{ key }}</dt><dd>{{ value }}</dd>
{% endfor %}
</dl>
<section class="orders">
<h2>订单</h2>
<ul>
{% for order in customer.orders %}
<li>
<a href="{{ order.url }}">{{ order.orderCode }}</a>
<span class="status">{{ order.statusText or order.status }}</span>
<span class="fee">¥{{ order.totalFee // 100 }}.{{ "%02d" % (order.totalFee % 100) }}</span>
{% for item in order.goods %}<span class="goods">{{ item.name }}</span>{% endfor %}
</li>
{% endfor %}
</ul>
</section>
<section class="tickets">
{% for ticket in customer.tickets %}<p><a href="{{ ticket.url }}">{{ ticket.title }}</a></p>{% endfor %}
</section>
</main>
</body>
</html>""")


async def panel(request: web.Request) -> web.Response:
    query = request.query
    expected = hashlib.md5(
        (SYSNUM + SECRET + query.get("timestamp", "") + query.get("partnerId", "")).encode(), usedforsecurity=False
    ).hexdigest()
    if not hmac.compare_digest(expected, query.get("sign", "").lower()):
        return web.Response(status=403, text="forbidden")
    raw = await request.app[REDIS].get(f"naive:customer:{query.get('partnerId', '')}")  # type: ignore[attr-defined]
    if raw is None:
        return web.Response(status=404, text="not found")
    html = TEMPLATE.render(customer=json.loads(raw))
    return web.Response(text=html, content_type="text/html")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "pid": os.getpid()})


def main() -> None:
    try:
        import uvloop
    except ImportError:
        pass
    else:
        import asyncio

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    url = sys.argv[2]

    async def redis_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        from sobot_panel.assets import sample_file

        client = connect(url)
        for customer in json.loads(sample_file("customers.json").read_text(encoding="utf-8"))["customers"]:
            await client.set(f"naive:customer:{customer['partnerId']}", json.dumps(customer, ensure_ascii=False))
        app[REDIS] = client
        yield
        await client.aclose()

    app = web.Application()
    app.cleanup_ctx.append(redis_ctx)
    app.router.add_get("/embed/workbench", panel)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
