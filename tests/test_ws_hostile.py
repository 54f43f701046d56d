"""The websocket under hostile input: hypothesis over hellos and the frames after them. Every answer is a
frame or a documented close code (never HTTP written into the socket, never an error in a log), and the
server keeps serving the other sockets.

The sockets are bare TCP streams (`helpers.rawws`): they send what a browser never would (invalid UTF-8,
any opcode) and read the server's bytes strictly, so raw HTTP in the socket fails at its first byte.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sobot_panel.app import create_app
from sobot_panel.live.frames import MAX_FRAME_CHARS, MAX_HELLO_BYTES
from sobot_panel.protocol.tokens import MAX_TOKEN_CHARS
from sobot_panel.settings import Settings

from .helpers.live import selected, workbench_fields
from .helpers.rawws import (
    BINARY,
    CLOSE,
    TEXT,
    Frame,
    check_error_frame,
    errors_logged,
    greeted,
    panel_token,
    raw_socket,
    still_serving,
)

ClientFactory = Callable[..., Awaitable[TestClient[Any, web.Application]]]
# Every close code a client may meet after the upgrade, as documented (frames.py, README "Live panels").
HELLO_CLOSES = {4400, 4401, 1007, 1009}
LATER_CLOSES = {1007, 1009}


@pytest.fixture
async def client(aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(make_settings()))


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
