"""The panel's `POST /panel/send` request (CONTRACT, "The panel's own protocol"), typed once at the boundary.

`{"token", "kind", "id", "data"}`: `kind` is what is sent (and becomes the audit record's `kind`), `id`
the client's idempotency key, `data` the card or ticket fields as SPEC §5 describes them.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import Code, PanelError, PayloadError

SendKind = Literal["ticket", "order_card", "goods_card"]
EVENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9_\-]{8,80}$")


class SendRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    token: str
    kind: SendKind
    id: str = Field(pattern=EVENT_ID_PATTERN.pattern)
    data: dict[str, Any]


def parse_send(body: object) -> SendRequest:
    """The request in a decoded JSON body, else the error that names what is wrong with it: a bad `kind`
    is `unknown_kind`, a bad `id` `bad_event_id` (400), `data` that is not an object a 422 problem."""
    try:
        return SendRequest.model_validate(body)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        field = str(first["loc"][0]) if first["loc"] else ""
    if field == "kind":
        kind = body.get("kind") if isinstance(body, dict) else None
        raise PanelError(Code.UNKNOWN_KIND, kind=str(kind)[:40])
    if field == "id":
        raise PanelError(Code.BAD_EVENT_ID)
    if field == "data":
        raise PayloadError([("data", Code.PAYLOAD_NOT_OBJECT, {})])
    raise PanelError(Code.BODY_NOT_JSON)
