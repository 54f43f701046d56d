"""The websocket under hostile input and faults: after the upgrade every answer is a frame or a documented
close code (never HTTP written into the socket, never a traceback in a log), and the server keeps serving
the other sockets.

The sockets here are bare TCP streams (`helpers.rawws`): they send what a browser never would (invalid
UTF-8, any opcode) and read the server's bytes strictly, so raw HTTP in the socket fails at its first byte.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sobot_panel.app import create_app
from sobot_panel.appkeys import STARTED
from sobot_panel.errors import Code, PanelError
from sobot_panel.live.frames import MAX_FRAME_CHARS, MAX_HELLO_BYTES
from sobot_panel.protocol.surfaces import build_query_string
from sobot_panel.protocol.tokens import MAX_TOKEN_CHARS
from sobot_panel.settings import Settings

from .helpers.live import boot_of, connect_panel, hello, next_frame, open_panel, selected, workbench_fields
from .helpers.rawws import BINARY, CLOSE, TEXT, Frame, RawSocket

ClientFactory = Callable[..., Awaitable[TestClient[Any, web.Application]]]
API = {"Authorization": "Bearer test-api-token"}
PHONE = "13912340000"  # what a failing directory quotes in its exception: it may not reach a log line
# Every close code a client may meet after the upgrade, as documented (frames.py, README "Live panels").
HELLO_CLOSES = {4400, 4401, 1007, 1009}
LATER_CLOSES = {1007, 1009}
# Error codes a refused frame may carry; `internal_error` is not one (it would mean a fault).
FRAME_ERRORS = {code.value for code in Code} - {Code.INTERNAL_ERROR.value}

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
async def client(aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(make_settings()))


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


async def panel_token(client: TestClient[Any, Any], partner_id: str = "C1001") -> str:
    response = await client.get(f"/embed/workbench?{build_query_string(workbench_fields(partner_id))}")
    assert response.status == 200
    return str(boot_of(await response.text())["token"])


async def raw_socket(client: TestClient[Any, Any], path: str = "/ws?lang=zh") -> RawSocket:
    return await RawSocket.open(str(client.server.host), int(client.server.port or 0), path)


async def greeted(client: TestClient[Any, Any], token: str) -> RawSocket:
    sock = await raw_socket(client)
    sock.send_json(hello(token))
    frame = await sock.receive()
    assert frame is not None and frame.json() == {"type": "ready"}, frame
    return sock


async def still_serving(client: TestClient[Any, Any]) -> None:
    """Another panel opens its socket and is answered: the server goes on serving."""
    ws = await connect_panel(client, await panel_token(client, "C1002"))
    await ws.send_json({"type": "ping"})
    await next_frame(ws, "pong")
    await ws.close()


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.levelno >= logging.ERROR]


def check_error_frame(frame: Frame) -> dict[str, Any]:
    body = frame.json()
    assert body["type"] == "error" and body["code"] in FRAME_ERRORS, body
    assert body["message"] and body["message"] != body["code"]  # words in the agent's language, not a code
    return body


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


# --- hostile input: the hello -------------------------------------------------------------------------

json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
nested = st.builds(
    lambda opener, count, closed: opener * count + ("]" * count if closed and opener == "[" else ""),
    st.sampled_from(["[", "{", '{"a":', '{"type":"hello","token":']),
    st.integers(1, 20_000),
    st.booleans(),
)
# (kind, value): rendered into a frame by `render`, once the test knows a real token.
hello_frames = st.one_of(
    st.tuples(
        st.just("hello"),
        st.tuples(
            st.sampled_from(["real", "truncated", "flipped", "foreign"]), st.none() | st.text(max_size=12) | json_like
        ),
    ),
    st.tuples(st.just("token"), json_like),
    st.tuples(st.just("long-token"), st.sampled_from([MAX_TOKEN_CHARS - 10, MAX_TOKEN_CHARS + 10, MAX_HELLO_BYTES])),
    st.tuples(st.just("text"), nested | st.text(max_size=200) | st.builds(json.dumps, json_like)),
    st.tuples(st.just("bytes"), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("binary"), st.binary(max_size=64)),
)


def render_hello(kind: str, value: Any, token: str) -> tuple[int, bytes, bool]:
    """(opcode, payload, whether the server must accept it)."""
    if kind == "hello":
        variant = {"real": token, "truncated": token[:-6], "flipped": token[:-4] + ("AAAA" if token[-4:] != "AAAA"
                   else "BBBB"), "foreign": "v2." + token[3:][::-1]}[value[0]]  # fmt: skip
        view = value[1]
        frame = {"type": "hello", "token": variant, "view": view}
        return TEXT, json.dumps(frame).encode(), value[0] == "real" and (view is None or isinstance(view, str))
    if kind == "token":
        return TEXT, json.dumps({"type": "hello", "token": value}).encode(), False
    if kind == "long-token":
        return TEXT, json.dumps({"type": "hello", "token": "v2." + "A" * value}).encode(), False
    if kind == "text":
        return TEXT, str(value).encode(), False
    return (TEXT if kind == "bytes" else BINARY), value, False


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=hello_frames)
async def test_fuzzed_hellos_get_ready_or_a_documented_close_code(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture, first: tuple[str, Any]
) -> None:
    caplog.clear()
    opcode, payload, accepted = render_hello(*first, await panel_token(client))
    sock = await raw_socket(client)
    sock.send(payload, opcode)
    frame = await sock.receive()
    assert frame is not None
    if accepted:
        assert frame.json() == {"type": "ready"}
    elif frame.opcode == TEXT:  # an invalid-UTF-8 "hello" is still refused, whatever else passed
        raise AssertionError(f"a bad hello was answered: {frame}")
    else:
        assert frame.opcode == CLOSE and frame.close_code in HELLO_CLOSES, frame
    await sock.close()
    assert not errors_logged(caplog), caplog.text
    await still_serving(client)


# --- hostile input: frames after the hello -----------------------------------------------------------

relayed_field = st.sampled_from(["partnerId", "sign", "timestamp", "email", "uid", "params", "cid"])
hostile_value = st.text(max_size=50) | nested.map(lambda text: text[:4000]) | st.builds(json.dumps, json_like)
# JSON text Python's `json` reads but no UTF-8 encoder writes back (lone surrogates), and numbers past what
# it prints: written by hand, since json.dumps cannot produce them.
raw_value = st.sampled_from(['"\\ud800"', '"\\udfff"', '"a\\ud83d"', '"\\ud83d\\ude00"', "9" * 5_000, "1e999", "-0"])
raw_frame = st.builds(
    lambda kind, key, value: f'{{"type":"{kind}","{key}":{value}}}',
    st.sampled_from(["ping", "resync", "selected", "bogus"]),
    st.sampled_from(["id", "view", "query", "uid"]),
    raw_value,
)
BURST = 25  # past the socket's burst of 20: the rest are refused before they are parsed
later_frames = st.one_of(
    st.tuples(st.just("burst"), st.tuples(raw_frame, st.sampled_from([1, 2, BURST]))),
    st.tuples(
        st.just("frame"),
        st.fixed_dictionaries(
            {"type": st.sampled_from(["selected", "resync", "ping", "hello", "bogus", ""]) | json_like},
            optional={
                "id": json_like,
                "view": json_like,
                "query": json_like | st.dictionaries(st.text(max_size=10), json_like, max_size=5),
                "params": json_like,
                "partnerId": json_like,
                "uid": json_like,
                "token": json_like,
            },
        ),
    ),
    st.tuples(st.just("huge-id"), st.tuples(st.sampled_from(["ping", "resync", "selected"]), st.integers(1, 6_000))),
    st.tuples(st.just("deep-params"), st.integers(1, 20_000)),
    st.tuples(st.just("relay"), st.tuples(relayed_field, hostile_value)),
    st.tuples(st.just("oversize"), st.sampled_from([MAX_FRAME_CHARS + 1, MAX_HELLO_BYTES - 100, MAX_HELLO_BYTES + 1])),
    st.tuples(st.just("text"), nested | st.text(max_size=200)),
    st.tuples(st.just("bytes"), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("binary"), st.binary(max_size=64)),
)


def render_later(kind: str, value: Any) -> list[tuple[int, bytes]]:
    """The frames to send, in order (a burst sends one frame many times, past the rate limit)."""
    if kind == "burst":
        return [(TEXT, value[0].encode())] * value[1]
    return [one_frame(kind, value)]


def one_frame(kind: str, value: Any) -> tuple[int, bytes]:
    if kind == "frame":
        return TEXT, json.dumps(value).encode()
    if kind == "huge-id":  # past what Python's json may print (4,300 digits): written by hand
        return TEXT, f'{{"type":"{value[0]}","id":{"9" * value[1]}}}'.encode()
    if kind == "deep-params":
        return TEXT, ('{"type":"selected","id":1,"params":' + "[" * value + "]" * value + "}").encode()
    if kind == "relay":
        fields = workbench_fields("C1002")
        fields[value[0]] = value[1]
        return TEXT, json.dumps(selected(fields, 3)).encode()
    if kind == "oversize":
        return TEXT, ('{"type":"ping","pad":"' + "x" * value + '"}').encode()
    if kind == "text":
        return TEXT, str(value).encode()
    return (TEXT if kind == "bytes" else BINARY), value


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(later_frames, min_size=1, max_size=4))
async def test_fuzzed_frames_get_error_frames_or_a_documented_close_code(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture, frames: list[tuple[str, Any]]
) -> None:
    caplog.clear()
    sock = await greeted(client, await panel_token(client))
    for kind, value in frames:
        for opcode, payload in render_later(kind, value):
            sock.send(payload, opcode)
    sock.send_json({"type": "ping", "id": "last"})
    while True:  # every answer until the final pong, or the close
        frame = await sock.receive()
        assert frame is not None, "the socket ended without a close frame"
        if frame.opcode == CLOSE:
            assert frame.close_code in LATER_CLOSES, frame
            break
        body = frame.json()
        if body["type"] == "pong":
            break
        if body["type"] == "error":
            check_error_frame(frame)
            if body["id"] == "last":  # the final ping, refused by the rate limit after a burst
                break
        else:
            assert body["type"] == "panel", body
    await sock.close()
    assert not errors_logged(caplog), caplog.text
    await still_serving(client)


async def test_deep_and_oversize_frames_are_named_and_the_socket_goes_on(client: TestClient[Any, Any]) -> None:
    sock = await greeted(client, await panel_token(client))
    sock.send(b"[" * 15_000)
    sock.send(('{"type":"selected","id":2,"params":' + "[" * 40 + "]" * 40 + "}").encode())
    sock.send(('{"type":"ping","pad":"' + "x" * MAX_FRAME_CHARS + '"}').encode())
    sock.send(b"\x00\x01", BINARY)
    got = [check_error_frame(frame) for frame in [await sock.receive() for _ in range(4)] if frame]
    assert [(body["code"], body["id"]) for body in got] == [
        ("frame_too_deep", None),
        ("frame_too_deep", None),
        ("frame_too_large", None),
        ("frame_not_json", None),
    ]
    assert "32" in got[0]["message"] and str(MAX_FRAME_CHARS) in got[2]["message"]
    sock.send(b'{"type":"ping"}')
    assert (await sock.receive() or Frame(0, b"")).json() == {"type": "pong"}
    # Past the hello's limit aiohttp closes the socket with 1009 before reading a byte of it as text.
    sock.send(b"x" * (MAX_HELLO_BYTES + 1))
    closed = await sock.receive()
    assert closed is not None and closed.close_code == 1009
    invalid = await greeted(client, await panel_token(client))
    invalid.send(b'{"type":"ping","x":"\xff\xfe"}')
    closed = await invalid.receive()
    assert closed is not None and closed.close_code == 1007  # invalid UTF-8 in a text frame
    await still_serving(client)
