"""The websocket frames of the panel's own protocol, typed once.

Frames from the panel, discriminated by `type`:
`{"type": "selected", "id", "view", "query", "params", "partnerId", "uid"}` (Sobot's SPEC §4 message,
relayed), `{"type": "resync", "id", "view"}` (after a reconnect) and `{"type": "ping"}`.
Frames to the panel: `{"type": "panel", "id", "html", "token", "partnerId"}`,
`{"type": "error", "id", "code", "field", "message"}` and `{"type": "pong", "token"?}`.

`id` is the frame's own id (`frame_id`), echoed in the answer so the panel knows which relay it answers;
it is not the HTTP request id.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ..errors import Code, PanelError

FrameId = int | str | None
QueryValue = str | int | float | bool | None


class _Frame(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


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


def parse_frame(data: str) -> IncomingFrame:
    """The typed frame in this text, else PanelError `frame_not_json` or `frame_invalid` naming the field."""
    try:
        return _INCOMING.validate_json(data)
    except ValidationError as error:
        first = error.errors()[0]
        if first["type"] == "json_invalid" or (first["type"] == "model_type" and not first["loc"]):
            raise PanelError(Code.FRAME_NOT_JSON) from None
        # loc starts with the frame's tag ("selected", ...): the field is what follows it
        where = ".".join(str(part) for part in first["loc"][1:]) or "type"
        raise PanelError(Code.FRAME_INVALID, field=where[:60]) from None


def frame_id(data: str) -> FrameId:
    """A frame's id, read leniently, for answering a frame that was refused before it was parsed."""
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        return None
    value = raw.get("id") if isinstance(raw, dict) else None
    return value if isinstance(value, int | str) else None


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
