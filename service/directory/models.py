"""The shapes of the enterprise's customer API (CONTRACT.md) and the `Directory` protocol.

Models ignore fields they do not know (an enterprise may send more) and are frozen: one parsed
`Customer` is shared by every request that the in-process cache tier answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Protocol, runtime_checkable

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from ..protocol.cards import MINI_PATH
from ..protocol.ticket_fields import is_http_url

# The query parameter names of `GET {base}/customers/lookup`, in the order they are tried.
LOOKUP_NAMES = ("partnerId", "phone", "email", "uid", "unionId")


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# Links from the upstream reach pages (href, src) and cards: each kind keeps only what it may be; anything
# else (`javascript:`, `data:`, a protocol-relative `//host`) becomes "" before a page ever sees it.
def _web(value: str) -> str:
    """A link an agent may open: absolute http(s)."""
    return value if is_http_url(value) else ""


def _image(value: str) -> str:
    """An image: absolute http(s), or a path on this service (the sample pictures, `/static/...`)."""
    return value if is_http_url(value) or (value.startswith("/") and not value.startswith("//")) else ""


def _page(value: str) -> str:
    """An order or product link: absolute http(s), or a mini-program page path (SPEC §5.2, §5.3)."""
    return value if is_http_url(value) or MINI_PATH.match(value) else ""


WebLink = Annotated[str, AfterValidator(_web)]
ImageLink = Annotated[str, AfterValidator(_image)]
PageLink = Annotated[str, AfterValidator(_page)]


class Goods(_Model):
    name: str
    pictureUrl: ImageLink = ""


class Order(_Model):
    orderCode: str
    status: int = Field(ge=0, le=7)  # SPEC §5.2 orderStatus; 0 = custom, shown as statusText
    statusText: str = ""
    createTime: int  # ms
    totalFee: int = Field(ge=0)  # fen
    url: PageLink = ""
    goods: list[Goods] = []


class Ticket(_Model):
    ticketId: str
    title: str
    status: str
    createTime: int  # ms
    url: WebLink = ""


class Product(_Model):
    title: str
    url: PageLink
    description: str = ""
    label: str = ""
    thumbnail: ImageLink = ""


class Customer(_Model):
    partnerId: str
    name: str
    phone: str = ""
    email: str = ""
    level: str = ""
    tags: list[str] = []
    attributes: dict[str, str] = {}
    orders: list[Order] = []
    tickets: list[Ticket] = []
    products: list[Product] = []
    channel: str = ""  # "miniprogram", "web", "app", "wechat", ...: decides the order-link rule of SPEC §5.2
    unionId: str = ""
    uid: str = ""

    @field_validator("attributes", mode="before")
    @classmethod
    def _attribute_values_as_text(cls, value: Any) -> Any:
        """Attributes are shown as text: numbers and booleans from the upstream become strings."""
        if not isinstance(value, dict):
            return value
        return {str(k): _as_text(v) for k, v in value.items()}


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


@dataclass(frozen=True, slots=True)
class LookupKeys:
    """Everything a verified context tells us about the customer, tried in a fixed order."""

    partner_id: str = ""
    phone: str = ""
    email: str = ""
    uid: str = ""
    union_id: str = ""

    def ordered(self) -> list[tuple[str, str]]:
        """The non-empty keys as (API name, value) pairs, most specific first."""
        values = (self.partner_id, self.phone, self.email, self.uid, self.union_id)
        return [(name, value.strip()) for name, value in zip(LOOKUP_NAMES, values, strict=True) if value.strip()]

    @property
    def is_empty(self) -> bool:
        return not self.ordered()


class UpstreamError(Exception):
    """The enterprise's customer API failed: 5xx, timeout, connection error or an unreadable answer."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@runtime_checkable
class Directory(Protocol):
    """Where customers come from: the sample file, the enterprise's HTTP API, or a plugin."""

    async def lookup(self, key: str, value: str) -> Customer | None:
        """The customer whose `key` (one of LOOKUP_NAMES) equals `value`; None when nobody matches.

        Raises UpstreamError when the answer cannot be known right now.
        """
        ...

    async def close(self) -> None: ...
