"""Pre-builders: the ready card `data` each button of the panel carries, from directory data. Pure.

The panel puts these on its "send order card" / "send goods card" buttons and on "ticket from order";
`sobot_panel.protocol.cards.build_message` validates them again when the agent clicks, like any other payload.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..clock import CHINA_TZ
from .cards import MAX_MS, card_slug


def absolute_url(url: str, base_url: str) -> str:
    """`/static/img/x.svg` → `{base_url}/static/img/x.svg`; anything else unchanged."""
    if url.startswith("/") and not url.startswith("//"):
        return base_url.rstrip("/") + url
    return url


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def _goods(order: dict[str, Any], base_url: str) -> list[dict[str, str]]:
    items = order.get("goods") or []
    return [
        {"name": _text(item.get("name")), "pictureUrl": absolute_url(_text(item.get("pictureUrl")), base_url)}
        for item in items
        if isinstance(item, dict)
    ]


def _fee_text(value: object) -> str:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else _text(value)


def order_card_from_order(order: dict[str, Any], *, base_url: str) -> dict[str, Any]:
    """`data` for a classic order card (SPEC §5.2) from a directory order.

    An order without listed goods gets goodsCount 1 (the card needs at least one item).
    """
    goods = _goods(order, base_url)
    status = order.get("status", 0)
    card: dict[str, Any] = {"orderStatus": status}
    if status == 0:
        card["statusCustom"] = _text(order.get("statusText"))
    card.update(
        createTime=order.get("createTime", 0),
        orderCode=_text(order.get("orderCode")),
        orderUrl=_text(order.get("url")),
        totalFee=_fee_text(order.get("totalFee", 0)),
        goodsCount=len(goods) or 1,
        goods=goods,
    )
    return card


def goods_card_from_product(product: dict[str, Any], *, base_url: str) -> dict[str, Any]:
    """`data` for a classic goods card (SPEC §5.3) from a directory product."""
    return {
        "title": _text(product.get("title")),
        "url": _text(product.get("url")),
        "description": _text(product.get("description")),
        "label": _text(product.get("label")),
        "thumbnail": absolute_url(_text(product.get("thumbnail")), base_url),
    }


def _china_time(ms: object) -> str:
    if not isinstance(ms, int) or isinstance(ms, bool) or not 0 <= ms <= MAX_MS:
        return ""
    try:
        return datetime.fromtimestamp(ms / 1000, CHINA_TZ).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return ""


def _status_word(status: object, status_texts: Mapping[int, str] | None) -> str:
    if isinstance(status, int) and status_texts and status_texts.get(status):
        return status_texts[status]
    return _text(status)


def _yuan(fen: object) -> str:
    text = _fee_text(fen)
    return f"{int(text) // 100}.{int(text) % 100:02d}" if re.fullmatch(r"[0-9]{1,16}", text) else ""


def general_card_from_order(
    order: dict[str, Any], *, base_url: str, status_texts: Mapping[int, str] | None = None
) -> dict[str, Any]:
    """V6 cardData (SPEC §5.4, cardType 0) for one directory order, as one list-style custom card.

    customCardStatus is the order's statusText, else `status_texts[status]` (the catalog's words for
    orderStatus 1-7, which this pure module does not hold), else the status number.
    """
    goods = _goods(order, base_url)
    code = _text(order.get("orderCode"))
    status = order.get("status", 0)
    custom = {
        "customCardId": code,
        "customCardName": goods[0]["name"] if goods else code,
        "customCardThumbnail": next((g["pictureUrl"] for g in goods if g["pictureUrl"]), ""),
        "customCardAmount": _yuan(order.get("totalFee")),
        "customCardAmountSymbol": "¥",
        "customCardLink": _text(order.get("url")),
        "customCardDesc": "、".join(g["name"] for g in goods if g["name"]),
        "customCardStatus": _text(order.get("statusText")) or _status_word(status, status_texts),
        "customCardCount": str(len(goods)),
        "customCardCode": code,
        "customCardTime": _china_time(order.get("createTime")),
    }
    return {"cardId": "order-" + card_slug(code), "cardStyle": 1, "cardType": 0,
            "customCards": [{k: v for k, v in custom.items() if v}]}  # fmt: skip


def general_card_from_product(product: dict[str, Any], *, base_url: str) -> dict[str, Any]:
    """V6 cardData (SPEC §5.4, cardType 1) for one directory product."""
    title = _text(product.get("title"))
    url = _text(product.get("url"))
    custom = {
        "customCardName": title,
        "customCardThumbnail": absolute_url(_text(product.get("thumbnail")), base_url),
        "customCardAmount": _text(product.get("label")),
        "customCardLink": url,
        "customCardDesc": _text(product.get("description")),
    }
    return {"cardId": "goods-" + card_slug(url or title), "cardStyle": 1, "cardType": 1,
            "customCards": [{k: v for k, v in custom.items() if v}]}  # fmt: skip


# SPEC §5.4: how the general card's fields map to the default ticket fields.
CARD_TO_TICKET = {
    "customCardStatus": "order_status",
    "customCardCount": "goods_count",
    "customCardCode": "order_code",
    "customCardTime": "create_time",
    "customCardName": "card_title",
    "customCardThumbnail": "card_picture",
    "customCardLink": "card_url",
    "customCardDesc": "card_desc",
}


def ticket_prefill_from_order(
    order: dict[str, Any], *, base_url: str = "", status_texts: Mapping[int, str] | None = None
) -> dict[str, str]:
    """Ticket field values for an order, by SPEC §5.4's card-to-ticket mapping (every mapped key).

    The caller keeps only the ids that are configured. Relative picture URLs become absolute only when
    `base_url` is given; `status_texts` as for `general_card_from_order`.
    """
    custom = general_card_from_order(order, base_url=base_url, status_texts=status_texts)["customCards"][0]
    return {ticket_id: str(custom.get(card_key, "")) for card_key, ticket_id in CARD_TO_TICKET.items()}
