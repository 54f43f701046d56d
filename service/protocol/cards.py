"""What the panel posts to Sobot (SPEC §5): tickets, order and goods cards. Pure: no I/O.

`build_message` turns what the page sends (`{kind, data}`) into the exact message for
`window.parent.postMessage`, or raises `PayloadError` listing every problem found, each as
`(field, code, params)` with `code` a message in `web/i18n/cards.json`. Rules that span several
fields (statusCustom when orderStatus is 0, goodsCount against goods, ...) are checked once every
field is valid on its own, so a payload may need two rounds to show all of its problems.

Links: SPEC §5.3 (and the Chinese original: "必须使用http或https开头…建议使用encodeURIComponent对链接进行转义")
asks for links that start with http(s) and *suggests* encodeURIComponent. Encoding a whole link that
way turns `https://` into `https%3A%2F%2F` and breaks the first rule (the vendor's own sample sends the
link unencoded), so every http(s) link is sent as given except that characters which may not appear in
a URL (spaces, non-ASCII, quotes, ...) are percent-encoded, like `encodeURI`; existing `%XX` escapes are
kept, so encoding is idempotent. The same applies to the V6 card's links (SPEC §5.4). Mini-program page
paths are sent exactly as given.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo
from pydantic_core import PydanticCustomError

from ..errors import Code, PayloadError
from .ticket_fields import Problem, TicketField, clean_ticket, encode_uri, has_bad_characters, is_http_url

M = TypeVar("M", bound=BaseModel)
CardFormat = Literal["classic", "v6"]

GOODS_CARD, ORDER_CARD, GENERAL_CARD = 24, 25, 28
MAX_MINIPAGE_BYTES = 8 * 1024
MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
MAX_FEN = 10**15
# A mini-program page path: `pages/order/detail?id=1`, an optional leading slash, no scheme, no spaces.
MINI_PATH = re.compile(r"^/?[A-Za-z0-9_\-]+(?:/[A-Za-z0-9_\-.]+)*(?:\?[^\s#]*)?$")


# --- field types -------------------------------------------------------------------------------


def _whole(value: object) -> object:
    """JSON numbers arrive as int; the page may send digit strings. Booleans and fractions are refused."""
    if isinstance(value, (bool, float)):
        raise PydanticCustomError(Code.NOT_INTEGER, "not an integer")
    if isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"-?[0-9]{1,18}", text):
            raise PydanticCustomError(Code.NOT_INTEGER, "not an integer")
        return int(text)
    return value


def _number_text(value: object) -> object:
    """A string field that also takes a JSON number (counts, amounts) and sends it as text."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < MAX_FEN:
        return str(value)
    if isinstance(value, float) and abs(value) < MAX_FEN:
        return str(int(value)) if value.is_integer() else str(value)
    return value


def _fen(value: object) -> str:
    """SPEC §5.2: totalFee is an amount in fen as an integer string ("1000" = 10.00 yuan), no decimals."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_FEN:
        return str(value)
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,16}", value.strip()) and int(value) <= MAX_FEN:
        return str(int(value))
    raise PydanticCustomError(Code.FEE_NOT_FEN, "not an amount in fen")


def _clean(value: str) -> str:
    if has_bad_characters(value):
        raise PydanticCustomError(Code.BAD_CHARACTERS, "unsendable characters")
    return value


def _mini(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("mini_program"))


def _http_link(value: str) -> str:
    if not value:
        return value
    encoded = encode_uri(value)
    if not is_http_url(encoded):
        raise PydanticCustomError(Code.NEED_HTTP_URL, "not an http(s) URL")
    return encoded


def _page_link(value: str, info: ValidationInfo) -> str:
    """SPEC §5.2: a mini-program customer needs a page path; every other channel an http(s) link."""
    if value and _mini(info):
        if not MINI_PATH.match(value):
            raise PydanticCustomError(Code.NEED_MINI_PATH, "not a mini-program page path")
        return value
    return _http_link(value)


def _any_link(value: str, info: ValidationInfo) -> str:
    """SPEC §5.3: an http(s) link, or a mini-program page (which opens only inside WeChat)."""
    if value and _mini(info) and MINI_PATH.match(value):
        return value
    return _http_link(value)


Whole = Annotated[int, BeforeValidator(_whole)]
Text = Annotated[str, AfterValidator(_clean)]
NumberText = Annotated[str, BeforeValidator(_number_text), AfterValidator(_clean)]
Fen = Annotated[str, BeforeValidator(_fen)]
HttpLink = Annotated[str, Field(max_length=2000), AfterValidator(_clean), AfterValidator(_http_link)]
PageLink = Annotated[str, Field(max_length=2000), AfterValidator(_clean), AfterValidator(_page_link)]
AnyLink = Annotated[str, Field(max_length=2000), AfterValidator(_clean), AfterValidator(_any_link)]


class _Card(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# --- classic cards (SPEC §5.2, §5.3) --------------------------------------------------------------


class OrderGoods(_Card):
    name: Text = Field(min_length=1, max_length=200)
    pictureUrl: HttpLink = ""


class OrderCard(_Card):
    """The `order` of SPEC §5.2, field names as the vendor spells them.

    statusCustom is required when orderStatus is 0 (custom) and sent only then: Sobot reads it only
    for status 0, so for other statuses it is dropped. goodsCount is at least 1 and, when goods are
    listed, must equal their number.
    """

    orderStatus: Whole = Field(ge=0, le=7)
    statusCustom: Text = Field(default="", max_length=32)
    createTime: Whole = Field(ge=0, le=MAX_MS)
    orderCode: Text = Field(min_length=1, max_length=64)
    orderUrl: PageLink = Field(min_length=1)
    totalFee: Fen
    goodsCount: Whole = Field(ge=1, le=1_000_000)
    goods: list[OrderGoods] = Field(default_factory=list, max_length=50)


class GoodsCard(_Card):
    """The goods card of SPEC §5.3; `label` is the price tag text, e.g. `100元`."""

    title: Text = Field(min_length=1, max_length=200)
    url: AnyLink = Field(min_length=1)
    description: Text = Field(default="", max_length=500)
    label: Text = Field(default="", max_length=50)
    thumbnail: HttpLink = ""


# --- the V6 general card (SPEC §5.4) ------------------------------------------------------------------


class CardMenu(_Card):
    """A button: menuType 0 link (menuLink required), 1 confirm (menuTip), 2 send (default)."""

    menuType: Whole = Field(default=2, ge=0, le=2)
    menuName: Text = Field(min_length=1, max_length=20)
    menuLink: HttpLink = ""
    menuLinkType: Whole = Field(default=0, ge=0, le=2)
    menuTip: Text = Field(default="", max_length=100)


class CustomCard(_Card):
    customCardId: Text = Field(default="", max_length=64)
    customCardName: Text = Field(min_length=1, max_length=200)
    customCardThumbnail: HttpLink = Field(min_length=1)
    customCardAmount: NumberText = Field(default="", max_length=32)
    customCardAmountSymbol: Text = Field(default="", max_length=8)
    customCardLink: AnyLink = ""
    customCardDesc: Text = Field(default="", max_length=500)
    customMenus: list[CardMenu] = Field(default_factory=list, max_length=3)
    # order cards only
    customCardStatus: Text = Field(default="", max_length=32)
    customCardCount: NumberText = Field(default="", max_length=16)
    customCardCode: Text = Field(default="", max_length=64)
    customCardTime: NumberText = Field(default="", max_length=32)


FieldKey = Annotated[str, Field(min_length=1, max_length=32), AfterValidator(_clean)]
FieldValue = Annotated[str, Field(max_length=200), AfterValidator(_clean)]


class GeneralCard(_Card):
    """`cardData` of SPEC §5.4. cardStyle 0 tiled / 1 list; cardType 0 order / 1 goods; cardTrigger 0/1/2."""

    cardId: Text = Field(default="", max_length=64)
    cardStyle: Whole = Field(default=1, ge=0, le=1)
    cardType: Whole = Field(default=1, ge=0, le=1)
    cardGuide: Text = Field(default="", max_length=200)
    cardImg: HttpLink = ""
    cardDesc: Text = Field(default="", max_length=500)
    cardLink: AnyLink = ""
    customField: dict[FieldKey, FieldValue] = Field(default_factory=dict, max_length=10)
    customCards: list[CustomCard] = Field(default_factory=list, max_length=10)
    cardMenus: list[CardMenu] = Field(default_factory=list, max_length=3)
    cardTrigger: Whole = Field(default=1, ge=0, le=2)
    cardOldPrompt: Text = Field(default="", max_length=200)


LIST_STYLE_ONLY = ("cardGuide", "cardImg", "cardDesc", "cardLink", "customField", "cardMenus")
ORDER_ONLY = ("customCardStatus", "customCardCount", "customCardCode", "customCardTime")


# --- building messages ------------------------------------------------------------------------------


def build_message(
    kind: str,
    data: dict[str, Any],
    *,
    card_format: CardFormat,
    cid: str,
    uid: str,
    mini_program: bool,
    ticket_fields: list[TicketField],
) -> dict[str, Any]:
    """The exact message the page posts to Sobot for `kind`, or PayloadError with every problem.

    ticket: `{"type": "createOrder", "params": {...}}` with exactly the configured field ids that have
    a value (empty optional fields are omitted). order_card / goods_card: `{cid, uid, msgType, miniPage}`
    with msgType 25 / 24 (classic, `data` as `order_card_from_order` / `goods_card_from_product` build
    it) or 28 (v6, `data` is the general card's cardData).
    """
    if kind == "ticket":
        params, problems = clean_ticket(data, ticket_fields)
        if problems:
            raise PayloadError(problems)
        return {"type": "createOrder", "params": params}
    if kind not in ("order_card", "goods_card"):
        raise PayloadError([("kind", Code.UNKNOWN_KIND, {"kind": str(kind)[:40]})])
    context = {"mini_program": mini_program}
    if card_format == "v6":
        msg_type, page = GENERAL_CARD, _general_card(kind, data, context)
    elif kind == "order_card":
        msg_type, page = ORDER_CARD, _order_card(data, context)
    else:
        card = _validate(GoodsCard, data, context)
        msg_type, page = GOODS_CARD, card.model_dump()
    mini_page = json.dumps(page, ensure_ascii=False, separators=(",", ":"))
    size = len(mini_page.encode("utf-8"))
    if size > MAX_MINIPAGE_BYTES:
        raise PayloadError([("miniPage", Code.CARD_TOO_LARGE, {"size": size, "max": MAX_MINIPAGE_BYTES})])
    return {"cid": cid, "uid": uid, "msgType": msg_type, "miniPage": mini_page}


def _order_card(data: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    card = _validate(OrderCard, data, context)
    problems: list[Problem] = []
    if card.orderStatus == 0 and not card.statusCustom:
        problems.append(("statusCustom", Code.REQUIRED, {}))
    if card.goods and card.goodsCount != len(card.goods):
        problems.append(
            ("goodsCount", Code.GOODS_COUNT_MISMATCH, {"count": card.goodsCount, "listed": len(card.goods)})
        )
    if problems:
        raise PayloadError(problems)
    # SPEC §5.2: statusCustom is read only when orderStatus is 0, so it is sent only then.
    return card.model_dump(exclude=None if card.orderStatus == 0 else {"statusCustom"})


def _general_card(kind: str, data: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    expected = 0 if kind == "order_card" else 1
    card = _validate(GeneralCard, {"cardType": expected, **data}, context)
    problems: list[Problem] = []
    if card.cardType != expected:
        problems.append(("cardType", Code.CARD_TYPE_MISMATCH, {"expected": expected}))
    if card.cardStyle == 0:
        problems.extend((name, Code.LIST_STYLE_ONLY, {}) for name in LIST_STYLE_ONLY if getattr(card, name))
    if not card.customCards and not (card.cardGuide or card.cardDesc or card.cardImg):
        problems.append(("customCards", Code.CARD_EMPTY, {}))
    for index, custom in enumerate(card.customCards):
        if card.cardType == expected == 1:
            problems.extend(
                (f"customCards[{index}].{name}", Code.ORDER_ONLY, {}) for name in ORDER_ONLY if getattr(custom, name)
            )
        problems.extend(_menu_problems(f"customCards[{index}].customMenus", custom.customMenus))
    problems.extend(_menu_problems("cardMenus", card.cardMenus))
    if problems:
        raise PayloadError(problems)
    if not card.cardId:
        card.cardId = _card_id(card)
    return _dump(card)


def _menu_problems(where: str, menus: list[CardMenu]) -> list[Problem]:
    return [(f"{where}[{i}].menuLink", Code.REQUIRED, {}) for i, menu in enumerate(menus) if menu.menuType == 0
            and not menu.menuLink]  # fmt: skip


def _dump(model: BaseModel, keep: tuple[str, ...] = ("cardStyle", "cardType", "cardTrigger")) -> dict[str, Any]:
    """A card as sent: empty optional values dropped; a menu keeps only the keys its menuType uses."""
    if isinstance(model, CardMenu):
        out: dict[str, Any] = {"menuType": model.menuType, "menuName": model.menuName}
        if model.menuType == 0:
            out.update(menuLink=model.menuLink, menuLinkType=model.menuLinkType)
        if model.menuType == 1 and model.menuTip:
            out["menuTip"] = model.menuTip
        return out
    out = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, list):
            value = [_dump(item) for item in value]
        if name in keep or not (value == "" or value == [] or value == {}):
            out[name] = value
    return out


def _card_id(card: GeneralCard) -> str:
    """A deterministic card id when the page gave none: from the order code or the card's name."""
    first = card.customCards[0] if card.customCards else None
    source = (first.customCardCode or first.customCardId or first.customCardName) if first else card.cardGuide
    return ("order-" if card.cardType == 0 else "goods-") + card_slug(source or card.cardDesc)


def card_slug(text: str) -> str:
    """A cardId-safe slug: the text itself when it is a plain identifier, else a short hash."""
    if re.fullmatch(r"[A-Za-z0-9_\-]{1,48}", text):
        return text
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _validate(model: type[M], data: dict[str, Any], context: dict[str, Any]) -> M:
    try:
        return model.model_validate(data, context=context)
    except ValidationError as error:
        raise PayloadError([_problem(item) for item in error.errors(include_url=False)]) from None


# pydantic's error types, mapped to our catalog codes and the placeholders each message needs.
_GENERIC: dict[str, tuple[str, str, str]] = {
    "missing": (Code.REQUIRED, "", ""),
    "string_too_short": (Code.REQUIRED, "", ""),
    "extra_forbidden": (Code.UNKNOWN_FIELD, "", ""),
    "string_type": (Code.NOT_TEXT, "", ""),
    "int_type": (Code.NOT_INTEGER, "", ""),
    "int_parsing": (Code.NOT_INTEGER, "", ""),
    "int_from_float": (Code.NOT_INTEGER, "", ""),
    "list_type": (Code.NOT_LIST, "", ""),
    "dict_type": (Code.NOT_OBJECT, "", ""),
    "model_type": (Code.NOT_OBJECT, "", ""),
    "model_attributes_type": (Code.NOT_OBJECT, "", ""),
    "string_too_long": (Code.TOO_LONG, "max", "max_length"),
    "too_long": (Code.TOO_MANY, "max", "max_length"),
    "greater_than_equal": (Code.TOO_SMALL, "min", "ge"),
    "less_than_equal": (Code.TOO_BIG, "max", "le"),
}
CUSTOM_CODES = frozenset(
    {Code.NOT_INTEGER, Code.FEE_NOT_FEN, Code.BAD_CHARACTERS, Code.NEED_HTTP_URL, Code.NEED_MINI_PATH}
)


def _problem(item: Any) -> Problem:
    parts = ['""' if part == "" else part for part in item["loc"] if part != "[key]"]  # key errors end in [key]
    field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in parts).lstrip(".")
    kind = item["type"]
    if kind in CUSTOM_CODES:
        return field or "data", kind, {}
    code, name, source = _GENERIC.get(kind, (Code.INVALID_VALUE, "", ""))
    params: dict[str, object] = {name: item.get("ctx", {}).get(source)} if name else {}
    return field or "data", code, params
