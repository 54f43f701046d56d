"""The websocket under faults: after the upgrade every failure is an error frame or a close code (never
HTTP written into the socket), logged once without what the failing code was handling, and the server
keeps serving the other sockets. The faults are real: a directory plugin installed through its entry
point that raises, and a frame id Python's json reads but no encoder writes back.

The sockets are bare TCP streams (`helpers.rawws`) that read the server's bytes strictly, so raw HTTP in
the socket fails at its first byte.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sobot_panel.app import create_app
from sobot_panel.appkeys import STARTED
from sobot_panel.errors import Code, PanelError
from sobot_panel.settings import Settings

from .helpers.live import next_frame, open_panel, selected, workbench_fields
from .helpers.rawws import (
    CLOSE,
    Frame,
    check_error_frame,
    errors_logged,
    greeted,
    panel_token,
    raw_socket,
    still_serving,
)

ClientFactory = Callable[..., Awaitable[TestClient[Any, web.Application]]]
API = {"Authorization": "Bearer test-api-token"}
PHONE = "13912340000"  # what a failing directory quotes in its exception: it may not reach a log line

FAULTY_PLUGIN = f'''
"""A directory that fails as no one foresaw for one customer: a bug in an enterprise's plugin."""
from sobot_panel.directory.sample import SampleDirectory


FAILING = {{"C1666"}}  # a test may add customers while it runs


class FaultyDirectory(SampleDirectory):
    async def lookup(self, key, value):
        if value in FAILING:
            raise RuntimeError("CRM row for {PHONE} is corrupt")
        return await super().lookup(key, value)


def make_directory(settings):
    return FaultyDirectory()
'''


@pytest.fixture
def faulty_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An installed directory plugin (a module and its dist-info on sys.path, found through the entry
    point group like any pip-installed one) that raises RuntimeError for the customers in its `FAILING`
    (C1666 to begin with)."""
    root = tmp_path / "site"
    info = root / "faulty_directory-1.0.dist-info"
    info.mkdir(parents=True)
    (root / "faulty_directory.py").write_text(FAULTY_PLUGIN)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: faulty-directory\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[sobot_panel.directories]\nfaulty = faulty_directory:make_directory\n")
    monkeypatch.syspath_prepend(str(root))
    return "faulty"


@pytest.fixture
async def client(aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(make_settings()))


# --- faults: a frame or a close code, never HTTP in the socket ---------------------------------------


async def test_a_frame_whose_handling_fails_unforeseen_gets_an_error_frame_and_the_socket_goes_on(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings], faulty_plugin: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    client = await aiohttp_client(create_app(make_settings(directory_plugin=faulty_plugin)))
    sock = await greeted(client, await panel_token(client, "C1001"))
    sock.send_json(selected(workbench_fields("C1666"), 5))
    frame = await sock.receive()
    assert frame is not None
    body = frame.json()
    assert body["type"] == "error" and body["id"] == 5 and body["code"] == "internal_error"
    assert body["message"] == "服务内部错误，已记录，请稍后重试"
    # The socket goes on: a ping is answered, and the next switch is pushed.
    sock.send_json({"type": "ping"})
    assert (await sock.receive() or Frame(0, b"")).json()["type"] == "pong"
    sock.send_json(selected(workbench_fields("C1002"), 6))
    pushed = (await sock.receive() or Frame(0, b"")).json()
    assert pushed["type"] == "panel" and pushed["id"] == 6 and "李娜" in pushed["html"]
    assert b"HTTP/" not in sock.received
    await sock.close()
    await still_serving(client)
    # Logged once, by where it failed, without what the failing code was handling.
    [line] = errors_logged(caplog)
    text = line.getMessage()
    assert "RuntimeError" in text and "faulty_directory.py" in text and line.exc_info is None
    assert PHONE not in caplog.text and "Traceback" not in caplog.text


async def test_a_refused_frame_whose_id_cannot_be_sent_back_is_still_answered(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A lone surrogate in an id is valid to Python's `json` but cannot be encoded: echoing it in the
    rate-limit answer used to raise inside the handler, and the error page went into the socket."""
    sock = await greeted(client, await panel_token(client))
    for _ in range(25):  # past the burst of 20: the last ones are refused before they are parsed
        sock.send(b'{"type": "ping", "id": "\\ud800"}')
    codes = [check_error_frame(frame)["code"] for frame in [await sock.receive() for _ in range(25)] if frame]
    assert codes.count("rate_limited") >= 5 and set(codes) == {"frame_not_json", "rate_limited"}
    assert b"HTTP/" not in sock.received and not errors_logged(caplog)
    await sock.close()
    await still_serving(client)


async def test_a_refresh_that_fails_unforeseen_is_told_to_each_panel_and_the_others_still_refresh(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings], faulty_plugin: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    import faulty_directory  # the plugin's own module: the test decides when its CRM row breaks

    client = await aiohttp_client(create_app(make_settings(directory_plugin=faulty_plugin)))
    first, _ = await open_panel(client, "C1001")
    second, _ = await open_panel(client, "C1001")
    other, _ = await open_panel(client, "C1002")
    faulty_directory.FAILING.add("C1001")
    try:
        assert (await client.post("/api/partners/C1001/invalidate", headers=API)).status == 202
        for ws in (first, second):  # each panel is told, none is skipped after the first failure
            error = await next_frame(ws, "error")
            assert error["code"] == "internal_error" and error["id"] is None and error["message"]
    finally:
        faulty_directory.FAILING.discard("C1001")
    await other.send_json({"type": "ping"})
    await next_frame(other, "pong")
    assert (await client.post("/api/partners/C1001/invalidate", headers=API)).status == 202
    for ws in (first, second):  # and once the directory answers again, the next refresh pushes
        assert (await next_frame(ws, "panel"))["partnerId"] == "C1001"
    lines = errors_logged(caplog)
    assert len(lines) == 2 and all("panel refresh failed" in line.getMessage() for line in lines)
    assert PHONE not in caplog.text and "Traceback" not in caplog.text


async def fail_after_upgrade(request: web.Request) -> web.StreamResponse:
    """A handler that fails after its websocket is prepared, in each way a handler can fail."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    request[STARTED] = ws
    failure = request.query["raise"]
    if failure == "panel":
        raise PanelError(Code.SIGN_MISMATCH)
    if failure == "http":
        raise web.HTTPForbidden()
    raise RuntimeError(f"customer {PHONE} broke it")


async def fail_mid_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    request[STARTED] = response
    await response.write(b"data: first\n\n")
    raise RuntimeError(f"customer {PHONE} broke it")


@pytest.mark.parametrize("failure", ["runtime", "panel", "http"])
async def test_the_error_middleware_never_writes_into_an_upgraded_socket(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture,
    failure: str,
) -> None:  # fmt: skip
    app = create_app(make_settings())
    app.router.add_get("/test/fails-after-upgrade", fail_after_upgrade)
    client = await aiohttp_client(app)
    sock = await raw_socket(client, f"/test/fails-after-upgrade?raise={failure}")
    frame = await sock.receive()
    assert frame is not None and frame.opcode == CLOSE and frame.close_code == 1011, frame
    sock.answer_close()
    assert await sock.receive() is None  # and nothing after the close
    [line] = errors_logged(caplog)
    assert "after its response started" in line.getMessage() and line.exc_info is None
    assert PHONE not in caplog.text
    await still_serving(client)


async def test_the_error_middleware_ends_a_started_event_stream_without_a_page(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(make_settings())
    app.router.add_get("/test/fails-mid-stream", fail_mid_stream)
    client = await aiohttp_client(app)
    response = await client.get("/test/fails-mid-stream")
    assert response.status == 200 and await response.read() == b"data: first\n\n"
    assert PHONE not in caplog.text and len(errors_logged(caplog)) == 1
