"""The websocket frames of the panel's own protocol, typed once.

Opening: the panel opens `GET /ws` (only `lang` in the URL: the session token never travels in a URL,
where proxies and logs would keep it) and its first frame is
`{"type": "hello", "token", "view"}`. The server answers `{"type": "ready"}` once the session is
accepted, or closes the socket with one of these codes (the reason names the problem):

- 4400: the first frame was not a hello (panel.js reconnects with backoff);
- 4401: the session token is invalid or expired, the reason says `token_invalid` or `token_expired`
  (the session is over: panel.js reloads its signed URL while the sign is valid, else says so);
- 4408: no hello within `HELLO_TIMEOUT_S` seconds (panel.js reconnects with backoff);
- 4429: this session already has `PANEL_WS_PER_SESSION` sockets open on this replica (reconnects later);
- 1007 (invalid UTF-8 in a text frame) and 1009 (a frame past `MAX_HELLO_BYTES`): aiohttp's own, before
  anything is decoded or parsed;
- 1011: a failure nobody foresaw outside any one frame (logged once, without the frame's content).

Frames from the panel after the hello, discriminated by `type`:
`{"type": "selected", "id", "view", "query", "params", "partnerId", "uid"}` (Sobot's SPEC §4 message,
relayed), `{"type": "resync", "id", "view"}` (after a reconnect) and `{"type": "ping"}`.
Frames to the panel: `{"type": "ready"}`, `{"type": "panel", "id", "html", "token", "partnerId"}`,
`{"type": "error", "id", "code", "field", "message"}` and `{"type": "pong", "token"?}`.

`id` is the frame's own id (`frame_id`), echoed in the answer so the panel knows which relay it answers;
it is not the HTTP request id.

Limits, cheapest first: the frame's size (aiohttp counts bytes before decoding; `MAX_FRAME_CHARS` is
counted before parsing), then the rate (`endpoint`), then a C parser with its own recursion limit, then
`jsonlimits.MAX_DEPTH` levels of nesting, then the frame's shape. Whatever breaks one gets an error frame
naming the problem (`frame_too_large`, `rate_limited`, `frame_not_json`, `frame_too_deep`, `frame_invalid`)
and the socket goes on; a hello that breaks one closes the socket with 4400.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ..errors import Code, PanelError
from ..protocol import jsonlimits
from ..protocol.tokens import MAX_TOKEN_CHARS

FrameId = int | str | None
QueryValue = str | int | float | bool | None

HELLO_TIMEOUT_S = 5.0
CLOSE_HELLO_EXPECTED = 4400
CLOSE_SESSION_ENDED = 4401
CLOSE_HELLO_TIMEOUT = 4408
CLOSE_TOO_MANY_SOCKETS = 4429
# A hello carries the session token, which holds the panel's verified context and so grows with its query:
# the limit fits the largest token the query limits allow. aiohttp applies it to every frame, in bytes,
# before decoding one (a larger frame closes the socket with 1009).
MAX_HELLO_BYTES = MAX_TOKEN_CHARS + 1024
# After the hello, the largest relay the query limits allow: the query's fields (16 KiB decoded, up to
# twice that once JSON-escaped) and Sobot's top-level copy of `params`. Counted before parsing.
MAX_FRAME_CHARS = 48 * 1024


class _Frame(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class HelloFrame(_Frame):
    """The first frame of every socket: the session token (never in the URL) and the view shown."""

    type: Literal["hello"]
    token: str = Field(max_length=MAX_TOKEN_CHARS)
    view: str | None = None


class SelectedFrame(_Frame):
    type: Literal["selected"]
    id: FrameId = None
    view: str | None = None
    query: dict[str, QueryValue] = Field(default_factory=dict, max_length=64)
    params: dict[str, Any] | str | None = None
    partnerId: str | None = None
    uid: str | None = None


class ResyncFrame(_Frame):
    type: Literal["resync"]
    id: FrameId = None
    view: str | None = None


class PingFrame(_Frame):
    type: Literal["ping"]
    id: FrameId = None


IncomingFrame = Annotated[SelectedFrame | ResyncFrame | PingFrame, Field(discriminator="type")]
_INCOMING: TypeAdapter[IncomingFrame] = TypeAdapter(IncomingFrame)
_HELLO: TypeAdapter[HelloFrame] = TypeAdapter(HelloFrame)


def parse_hello(data: str) -> HelloFrame | None:
    """The hello in this text, or None when it is anything else (or beyond a limit)."""
    try:
        return _HELLO.validate_python(jsonlimits.load(data, max_bytes=MAX_HELLO_BYTES))
    except (jsonlimits.JsonRefused, ValidationError):
        return None


def parse_frame(data: str) -> IncomingFrame:
    """The typed frame in this text, else PanelError `frame_too_large`, `frame_not_json`, `frame_too_deep`
    or `frame_invalid` naming the field."""
    try:
        raw = jsonlimits.load(data, max_bytes=MAX_FRAME_CHARS)
    except jsonlimits.JsonRefused as refused:
        if refused.reason == "size":
            raise PanelError(Code.FRAME_TOO_LARGE, limit=MAX_FRAME_CHARS) from None
        if refused.reason == "depth":
            raise PanelError(Code.FRAME_TOO_DEEP, limit=jsonlimits.MAX_DEPTH) from None
        raise PanelError(Code.FRAME_NOT_JSON) from None
    try:
        return _INCOMING.validate_python(raw)
    except ValidationError as error:
        # loc starts with the frame's tag ("selected", ...): the field is what follows it
        where = ".".join(str(part) for part in error.errors()[0]["loc"][1:]) or "type"
        raise PanelError(Code.FRAME_INVALID, field=where[:60]) from None


def frame_id(data: str) -> FrameId:
    """A frame's id, read leniently, for answering a frame that was refused (or failed) before it was
    parsed. The same parser and limits as `parse_frame`, so an id that could not be sent back (a lone
    surrogate, which Python's own `json` would accept) is never echoed."""
    try:
        raw = jsonlimits.load(data, max_bytes=MAX_FRAME_CHARS)
    except jsonlimits.JsonRefused:
        return None
    value = raw.get("id") if isinstance(raw, dict) else None
    return value if isinstance(value, int | str) and not isinstance(value, bool) else None


def selected_fields(frame: SelectedFrame) -> dict[str, str]:
    """The query to verify. `params` and `uid` are outside every sign formula, so Sobot's top-level
    copies may fill them in when the query lacks them; everything signed comes from the query only."""
    fields = {name: "" if value is None else str(value) for name, value in frame.query.items()}
    lowered = {name.lower() for name in fields}
    if "params" not in lowered and frame.params:
        fields["params"] = frame.params if isinstance(frame.params, str) else json.dumps(frame.params)
    if "uid" not in lowered and frame.uid:
        fields["uid"] = frame.uid
    return fields


def compact(frame: dict[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
