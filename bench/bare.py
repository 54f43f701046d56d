"""The baselines: a bare aiohttp handler, one XADD per request, and an echo websocket, run like the service runs.

    python -m bench.bare PORT [REDIS_URL]

`GET /` and `GET /healthz` answer "ok"; `GET /page` answers with the bytes and headers of a real panel
page when BENCH_PAGE_FILE names a file with its body and BENCH_PAGE_HEADERS one with its headers as a
JSON object (the same-bytes floor of `bench pages`); `POST /xadd` reads the JSON body and appends it to the stream
`bench:xadd` with one XADD (needs REDIS_URL); `GET /ws` answers every text frame `{"id", "pad"}` with
`{"type": "panel", "id", "html": "x" * pad}` (an echo sized like the panel's push), and a `hello` with
`{"type": "ready"}`, as the service answers a panel's first frame.
"""

from __future__ import annotations

import json
import os
import sys

from aiohttp import WSMsgType, web
from redis.exceptions import RedisError
from sobot_panel.redis import connect

REDIS = web.AppKey("redis", object)


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def page_handler(body: bytes, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    """The panel page's own bytes and headers, as fixed as aiohttp can send them: the floor for a page."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    return page


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "pid": os.getpid()})


async def xadd(request: web.Request) -> web.Response:
    body = await request.json()
    fields = {key: str(value) for key, value in body.items() if not isinstance(value, dict)}
    fields["data"] = json.dumps(body.get("data"), ensure_ascii=False, separators=(",", ":"))
    try:
        entry = await request.app[REDIS].xadd("bench:xadd", fields, maxlen=1_000_000, approximate=True)  # type: ignore[attr-defined]
    except (RedisError, OSError) as error:
        return web.json_response({"ok": False, "error": type(error).__name__}, status=503)
    return web.json_response({"ok": True, "entryId": entry})


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=25.0)
    await ws.prepare(request)
    async for message in ws:
        if message.type is WSMsgType.TEXT:
            frame = json.loads(message.data)
            if frame.get("type") == "hello":  # the panel's first frame is answered as the service does
                await ws.send_str('{"type":"ready"}')
                continue
            reply = {"type": "panel", "id": frame.get("id"), "html": "x" * int(frame.get("pad", 0))}
            await ws.send_str(json.dumps(reply, separators=(",", ":")))
    return ws


def main() -> None:
    try:
        import uvloop
    except ImportError:
        pass
    else:
        import asyncio

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ws", echo)
    if os.environ.get("BENCH_PAGE_FILE"):
        with open(os.environ["BENCH_PAGE_FILE"], "rb") as body, open(os.environ["BENCH_PAGE_HEADERS"]) as headers:
            app.router.add_get("/page", page_handler(body.read(), json.load(headers)))
    if len(sys.argv) > 2:
        url = sys.argv[2]

        async def redis_ctx(app: web.Application):  # type: ignore[no-untyped-def]
            app[REDIS] = connect(url)
            yield
            await app[REDIS].aclose()  # type: ignore[attr-defined]

        app.cleanup_ctx.append(redis_ctx)
        app.router.add_post("/xadd", xadd)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
