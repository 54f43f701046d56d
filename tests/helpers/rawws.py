"""A websocket client on a bare TCP stream, for hostile-input tests, and helpers to use it on the panel.

aiohttp's client refuses to send what an attacker would (invalid UTF-8 in a text frame, any opcode) and
reads whatever the server writes as best it can; this one sends any bytes under any opcode and reads the
server's side strictly: every byte after the `101` must be a well-formed, unmasked websocket frame with
its reserved bits clear. An HTTP response written into the upgraded socket (`HTTP/1.1 500 ...`, whose
first byte has reserved bits set) fails `receive` with `NotAFrame`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import struct
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sobot_panel.errors import Code
from sobot_panel.protocol.surfaces import build_query_string

from .live import boot_of, connect_panel, hello, next_frame, workbench_fields

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA
# Error codes a refused frame may carry; `internal_error` is not one (it would mean a fault).
FRAME_ERRORS = {code.value for code in Code} - {Code.INTERNAL_ERROR.value}


class NotAFrame(AssertionError):
    """The server wrote bytes into the socket that are not a websocket frame."""


@dataclass(frozen=True)
class Frame:
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        return struct.unpack("!H", self.payload[:2])[0] if self.opcode == CLOSE and len(self.payload) >= 2 else None

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode(errors="replace") if self.opcode == CLOSE else ""

    def json(self) -> dict[str, Any]:
        assert self.opcode == TEXT, self
        value: dict[str, Any] = json.loads(self.payload)
        return value


class RawSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.received = bytearray()  # every byte the server wrote after its 101, for assertions

    @classmethod
    async def open(cls, host: str, port: int, path: str = "/ws?lang=zh") -> RawSocket:
        reader, writer = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        assert head.startswith(b"HTTP/1.1 101"), head[:200]
        return cls(reader, writer)

    def send(self, payload: bytes, opcode: int = TEXT) -> None:
        """One final, masked frame (clients must mask), whatever the payload."""
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        elif size < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
        masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
        self._writer.write(head + mask + masked)

    def answer_close(self) -> None:
        """Answer the server's close frame, as a client must; the server then ends the stream."""
        self.send(struct.pack("!H", 1000), CLOSE)

    def send_json(self, value: Any) -> None:
        self.send(json.dumps(value, ensure_ascii=False).encode())

    async def receive(self, timeout: float = 5.0) -> Frame | None:
        """The server's next data or close frame (its pings are skipped), or None once the stream ended."""
        async with asyncio.timeout(timeout):
            while True:
                first = await self._read(2)
                if first is None:
                    return None
                if first[0] & 0x70 or first[1] & 0x80 or (first[0] & 0x0F) not in (TEXT, BINARY, CLOSE, PING, PONG):
                    rest = await self._reader.read(200)
                    raise NotAFrame(f"not a websocket frame: {bytes(first) + rest!r}")
                size = first[1] & 0x7F
                if size == 126:
                    size = struct.unpack("!H", await self._need(2))[0]
                elif size == 127:
                    size = struct.unpack("!Q", await self._need(8))[0]
                frame = Frame(first[0] & 0x0F, await self._need(size) if size else b"")
                if frame.opcode not in (PING, PONG):
                    return frame

    async def _read(self, count: int) -> bytes | None:
        try:
            data = await self._reader.readexactly(count)
        except asyncio.IncompleteReadError as partial:
            if partial.partial:
                raise NotAFrame(f"the stream ended mid-frame: {partial.partial!r}") from None
            return None
        self.received += data
        return data

    async def _need(self, count: int) -> bytes:
        data = await self._read(count)
        if data is None:
            raise NotAFrame("the stream ended mid-frame")
        return data

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()


# --- on the panel service ----------------------------------------------------------------------------


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
