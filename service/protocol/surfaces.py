"""The eight docking surfaces of SPEC §2, their context models, and query parsing. Pure: no I/O.

A query arrives either as ordinary `name=value` pairs (percent-encoded values) or, when the admin put
`zc_encode=1` on the docking URL, as one `encodeURIComponent` blob of everything after `?` (SPEC §2.2).
Names are matched case-insensitively, because the vendor's own example spells `partnerid`.

Every model keeps `fields`: the canonical raw string value of each field exactly as sent, because the
sign is computed over those strings (a timestamp `0017` must not become `17` before it is checked).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, ClassVar
from urllib.parse import quote, unquote

from pydantic import BaseModel, ConfigDict, Field

from ..clock import china_time
from ..errors import Code, NotFound, QueryError, QueryTooLong
from . import jsonlimits


class Surface(StrEnum):
    WORKBENCH = "workbench"
    CALL = "call"
    CALL_TASK = "call-task"
    TICKET = "ticket"
    CUSTOMER = "customer"
    QA = "qa"
    MONITOR = "monitor"
    WECOM = "wecom"


class View(StrEnum):
    PROFILE = "profile"
    ORDERS = "orders"
    TICKETS = "tickets"
    NEW_TICKET = "new-ticket"


def parse_surface(name: str) -> Surface:
    try:
        return Surface(name)
    except ValueError:
        raise NotFound(Code.UNKNOWN_SURFACE, surface=name[:40]) from None


def parse_view(name: str) -> View:
    try:
        return View(name)
    except ValueError:
        raise NotFound(Code.UNKNOWN_VIEW, view=name[:40]) from None


# --- limits ----------------------------------------------------------------------------------

MAX_QUERY_LENGTH = 16 * 1024
MAX_VALUE_LENGTH = 4 * 1024
MAX_TIMESTAMP_DIGITS = 15


# --- models ----------------------------------------------------------------------------------


class IvrStep(BaseModel):
    model_config = ConfigDict(frozen=True)

    navKey: str
    navName: str


class SurfaceContext(BaseModel):
    """What Sobot told us about the agent and the customer on one surface."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The signed names of this surface, canonical spelling, in SPEC order.
    FIELD_NAMES: ClassVar[tuple[str, ...]] = ()
    # Fields shown in the panel header (beyond agent and customer), in display order.
    DISPLAY: ClassVar[tuple[str, ...]] = ()

    fields: dict[str, str] = Field(default_factory=dict)
    sign: str = ""

    @property
    def agent(self) -> str:
        return self.fields.get("email", "")

    @property
    def partner_id(self) -> str:
        return self.fields.get("partnerId", "")

    @property
    def user_id(self) -> str:
        """Sobot's user ID of the customer (`uid`), on every surface that sends one."""
        return self.fields.get("uid", "")

    @property
    def chat_id(self) -> str:
        """The conversation ID (`cid`), on the surfaces that send one."""
        return self.fields.get("cid", "")

    @property
    def phone(self) -> str:
        return self.fields.get("uphone", "")

    @property
    def customer_email(self) -> str:
        return self.fields.get("uemail", "")

    @property
    def union_id(self) -> str:
        return ""

    @property
    def signed_at_ms(self) -> int | None:
        raw = self.fields.get("timestamp", "")
        return int(raw) if raw else None

    @property
    def params(self) -> dict[str, Any]:
        return {}

    def display_fields(self) -> list[tuple[str, str]]:
        shown: list[tuple[str, str]] = []
        for name in self.DISPLAY:
            value = self.fields.get(name, "")
            if name == "createChatTime" and value:
                value = china_time(int(value), "%m-%d %H:%M")
            if value:
                shown.append((name, value))
        return shown


class WorkbenchContext(SurfaceContext):
    FIELD_NAMES = ("partnerId", "email", "sign", "timestamp", "createChatTime", "uid", "cid", "params",
                   "groupId", "groupName")  # fmt: skip
    DISPLAY = ("groupName", "createChatTime", "cid")

    partnerId: str = ""
    email: str = ""
    timestamp: int | None = None
    createChatTime: int | None = None
    uid: str = ""
    cid: str = ""
    params_: dict[str, Any] = Field(default_factory=dict, alias="params")
    groupId: str = ""
    groupName: str = ""

    @property
    def params(self) -> dict[str, Any]:
        return self.params_


class CallContext(SurfaceContext):
    FIELD_NAMES = ("partnerId", "callId", "email", "sign", "timestamp", "uid", "uphone", "uemail", "ivrPath",
                   "province", "city")  # fmt: skip
    DISPLAY = ("callId", "uphone", "location")

    partnerId: str = ""
    callId: str = ""
    email: str = ""
    timestamp: int | None = None
    uid: str = ""
    uphone: str = ""
    uemail: str = ""
    ivrPath: list[IvrStep] = Field(default_factory=list)
    province: str = ""
    city: str = ""

    def display_fields(self) -> list[tuple[str, str]]:
        shown = [(n, v) for n, v in super().display_fields() if n != "location"]
        # Municipalities (上海, 北京 …) are their own province: say the name once.
        parts = [self.province] if self.province == self.city else [self.province, self.city]
        location = " ".join(part for part in parts if part)
        return shown + ([("location", location)] if location else [])


class CallTaskContext(SurfaceContext):
    FIELD_NAMES = ("email", "sign", "timestamp", "uid", "uphone", "uemail")
    DISPLAY = ("uphone", "uemail")

    email: str = ""
    timestamp: int | None = None
    uid: str = ""
    uphone: str = ""
    uemail: str = ""


class TicketContext(SurfaceContext):
    FIELD_NAMES = ("email", "sign", "timestamp", "uid", "uphone", "uemail", "ticketId")
    DISPLAY = ("ticketId", "uphone", "uemail")

    email: str = ""
    timestamp: int | None = None
    uid: str = ""
    uphone: str = ""
    uemail: str = ""
    ticketId: str = ""


class CustomerContext(SurfaceContext):
    FIELD_NAMES = ("partnerId", "email", "sign", "timestamp", "uid", "uphone", "uemail")
    DISPLAY = ("uphone", "uemail")

    partnerId: str = ""
    email: str = ""
    timestamp: int | None = None
    uid: str = ""
    uphone: str = ""
    uemail: str = ""


class QaContext(SurfaceContext):
    FIELD_NAMES = ("partnerId", "email", "sign", "timestamp", "uid", "cid", "uphone", "uemail")
    DISPLAY = ("cid", "uphone", "uemail")

    partnerId: str = ""
    email: str = ""
    timestamp: int | None = None
    uid: str = ""
    cid: str = ""
    uphone: str = ""
    uemail: str = ""


class MonitorContext(QaContext):
    pass


class WecomContext(SurfaceContext):
    # `companyId` appears in the vendor's example URL but not in the field table nor in the sign.
    FIELD_NAMES = ("corpId", "userId", "partnerId", "serviceId", "serviceRoleId", "wxUnionId", "wxBuildUnionId",
                   "tel", "serviceTel", "timeStamp", "sign", "companyId")  # fmt: skip
    DISPLAY = ("tel", "corpId", "serviceId", "serviceTel")

    corpId: str = ""
    userId: str = ""
    partnerId: str = ""
    serviceId: str = ""
    serviceRoleId: str = ""
    wxUnionId: str = ""
    wxBuildUnionId: str = ""
    tel: str = ""
    serviceTel: str = ""
    timeStamp: int | None = None
    companyId: str = ""

    @property
    def agent(self) -> str:
        return self.userId

    @property
    def phone(self) -> str:
        return self.tel

    @property
    def union_id(self) -> str:
        return self.wxUnionId or self.wxBuildUnionId

    @property
    def signed_at_ms(self) -> int | None:
        """WeCom's `timeStamp`: milliseconds per SPEC §2, but a seconds value is read as seconds."""
        if self.timeStamp is None:
            return None
        return self.timeStamp * 1000 if self.timeStamp < 100_000_000_000 else self.timeStamp


MODELS: dict[Surface, type[SurfaceContext]] = {
    Surface.WORKBENCH: WorkbenchContext,
    Surface.CALL: CallContext,
    Surface.CALL_TASK: CallTaskContext,
    Surface.TICKET: TicketContext,
    Surface.CUSTOMER: CustomerContext,
    Surface.QA: QaContext,
    Surface.MONITOR: MonitorContext,
    Surface.WECOM: WecomContext,
}
_CANONICAL: dict[Surface, dict[str, str]] = {
    surface: {name.lower(): name for name in model.FIELD_NAMES} for surface, model in MODELS.items()
}
TIMESTAMP_FIELDS = frozenset({"timestamp", "timeStamp", "createChatTime"})


# --- parsing ---------------------------------------------------------------------------------


def _unquote(text: str, name: str) -> str:
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise QueryError(Code.BAD_ENCODING, field=name) from None


def split_query(raw: str) -> list[tuple[str, str]]:
    """`name=value` pairs with values decoded once; a zc_encode blob is decoded and split first.

    `+` stays a plus: Sobot encodes with encodeURIComponent, where a space is `%20`, and an email
    such as `a+b@x.cn` must reach the sign formula unchanged.
    """
    if len(raw) > MAX_QUERY_LENGTH:
        raise QueryTooLong(Code.QUERY_TOO_LONG, limit=MAX_QUERY_LENGTH)
    pairs: list[tuple[str, str]] = []
    for piece in raw.split("&"):
        if not piece:
            continue
        if "=" not in piece:
            decoded = _unquote(piece, "zc_encode")
            if "=" in decoded:
                # The zc_encode=1 blob: one decodeURIComponent, then the text is taken literally.
                for inner in decoded.split("&"):
                    if inner:
                        name, _, value = inner.partition("=")
                        pairs.append((name, value))
            continue
        name, _, value = piece.partition("=")
        if "%" in piece:  # else decoding changes nothing (`+` stays a plus)
            pairs.append((_unquote(name, "name"), _unquote(value, name)))
        else:
            pairs.append((name, value))
    return pairs


def canonical_fields(surface: Surface, pairs: list[tuple[str, str]] | Mapping[str, str]) -> dict[str, str]:
    """The surface's documented fields under their canonical names; unknown names are ignored.

    The same field sent twice with different values is refused: we could not know which one was signed.
    """
    names = _CANONICAL[surface]
    fields: dict[str, str] = {}
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    for name, value in items:
        canonical = names.get(name.strip().lower())
        if canonical is None:
            continue
        if len(value) > MAX_VALUE_LENGTH:
            raise QueryError(Code.VALUE_TOO_LONG, field=canonical, limit=MAX_VALUE_LENGTH)
        if canonical in fields and fields[canonical] != value:
            raise QueryError(Code.DUPLICATE_FIELD, field=canonical)
        fields[canonical] = value
    return fields


def _timestamp(name: str, raw: str) -> int | None:
    if raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > MAX_TIMESTAMP_DIGITS:
        raise QueryError(Code.BAD_TIMESTAMP, field=name)
    return int(raw)


def _json(raw: str, field: str, code: Code) -> Any:
    try:
        return jsonlimits.load(raw, max_bytes=4 * MAX_VALUE_LENGTH)
    except jsonlimits.JsonRefused as refused:
        if refused.reason == "depth":
            raise QueryError(Code.JSON_TOO_DEEP, field=field, limit=jsonlimits.MAX_DEPTH) from None
        raise QueryError(code, field=field) from None


def _params(raw: str) -> dict[str, Any]:
    if raw == "":
        return {}
    value = _json(raw, "params", Code.BAD_PARAMS_JSON)
    if not isinstance(value, dict):
        raise QueryError(Code.BAD_PARAMS_JSON, field="params")
    return value


def _ivr_path(raw: str) -> list[IvrStep]:
    if raw == "":
        return []
    value = _json(raw, "ivrPath", Code.BAD_IVR_JSON)
    if not isinstance(value, list) or not all(isinstance(step, dict) for step in value):
        raise QueryError(Code.BAD_IVR_JSON, field="ivrPath")
    return [IvrStep(navKey=_text(step.get("navKey")), navName=_text(step.get("navName"))) for step in value]


def _text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def parse_fields(surface: Surface, raw_fields: Mapping[str, str]) -> SurfaceContext:
    """A context model from name/value strings (a page's query, or the `query` of a `selected` message)."""
    return _model(surface, canonical_fields(surface, {str(k): _text(v) for k, v in raw_fields.items()}))


def _model(surface: Surface, fields: dict[str, str]) -> SurfaceContext:
    """The context model of canonical fields (`canonical_fields`), each value checked and converted."""
    values: dict[str, Any] = {}
    for name, raw in fields.items():
        if name in TIMESTAMP_FIELDS:
            values[name] = _timestamp(name, raw)
        elif name == "params":
            values["params"] = _params(raw)
        elif name == "ivrPath":
            values["ivrPath"] = _ivr_path(raw)
        else:
            values[name] = raw
    return MODELS[surface].model_validate({**values, "fields": fields})


def parse_query_string(surface: Surface, raw: str) -> SurfaceContext:
    return parse_fields_pairs(surface, split_query(raw))


def parse_fields_pairs(surface: Surface, pairs: list[tuple[str, str]]) -> SurfaceContext:
    # The pairs are made canonical once; parse_fields would do it again on the result.
    return _model(surface, canonical_fields(surface, pairs))


# --- building (for the sign command, the host simulator and tests) --------------------------

# encodeURIComponent leaves these unescaped; so do we, to build the URL Sobot would build.
_URI_COMPONENT_SAFE = "-_.!~*'()"


def build_query_string(fields: Mapping[str, str]) -> str:
    return "&".join(
        f"{quote(name, safe=_URI_COMPONENT_SAFE)}={quote(value, safe=_URI_COMPONENT_SAFE)}"
        for name, value in fields.items()
    )


def zc_encode_blob(fields: Mapping[str, str]) -> str:
    """SPEC §2.2: everything after `?` as one encodeURIComponent blob, `zc_encode=1` included."""
    literal = "&".join(f"{name}={value}" for name, value in {"zc_encode": "1", **fields}.items())
    return quote(literal, safe=_URI_COMPONENT_SAFE)
