"""Cards and tickets (SPEC §5): exact messages, one row per rule, the V6 general card, and the pre-builders."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sobot_panel.errors import PayloadError
from sobot_panel.i18n import LANGS, Catalog
from sobot_panel.protocol import card_builders, cards
from sobot_panel.protocol.card_builders import (
    general_card_from_order,
    general_card_from_product,
    goods_card_from_product,
    order_card_from_order,
    ticket_prefill_from_order,
)
from sobot_panel.protocol.cards import GENERAL_CARD, GOODS_CARD, ORDER_CARD, build_message
from sobot_panel.protocol.ticket_fields import DEFAULT_TICKET_FIELDS, Option, TicketField


def audit_kind(message: dict[str, Any]) -> str:
    """CONTRACT's audit `kind` of a built message: createOrder, msgType 25/24, or 28 by cardType (SPEC §5.4).

    The service records the request's own `kind`; this oracle checks that the message it built says the same."""
    if message.get("type") == "createOrder":
        return "ticket"
    kinds = {ORDER_CARD: "order_card", GOODS_CARD: "goods_card"}
    if message.get("msgType") in kinds:
        return kinds[message["msgType"]]
    if message.get("msgType") == GENERAL_CARD:
        return "order_card" if json.loads(message["miniPage"]).get("cardType", 1) == 0 else "goods_card"
    raise ValueError(f"not a Sobot card or ticket message: {sorted(message)!r}")


ROOT = Path(__file__).resolve().parent.parent
CATALOG = Catalog.load()
DROP = object()  # a row's value that removes the key


def build(kind: str, data: dict[str, Any], *, fmt: str = "classic", mini: bool = False,
          fields: list[TicketField] | None = None) -> dict[str, Any]:  # fmt: skip
    return build_message(
        kind,
        data,
        card_format=fmt,  # type: ignore[arg-type]
        cid="111111",
        uid="222222",
        mini_program=mini,
        ticket_fields=list(DEFAULT_TICKET_FIELDS) if fields is None else fields,
    )


def problems_of(kind: str, data: dict[str, Any], **options: Any) -> list[tuple[str, str]]:
    with pytest.raises(PayloadError) as info:
        build(kind, data, **options)
    assert_in_catalog(info.value.problems)
    return [(field, code) for field, code, _ in info.value.problems]


def assert_in_catalog(problems: list[tuple[str, str, dict[str, object]]]) -> None:
    """Every problem's code is a catalog message in both languages, and its placeholders all get filled."""
    assert problems
    for field, code, params in problems:
        assert code in CATALOG, code
        assert "field" not in params  # the view passes field= separately
        assert isinstance(field, str) and field
        for lang in LANGS:
            # placeholders filled with plain values, so a stray "{" means one the problem did not provide
            text = CATALOG.text(code, lang, field="F", **{name: "P" for name in params})
            assert text != code and "{" not in text, (code, lang, text)


def changed(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(base)
    for key, value in changes.items():
        if value is DROP:
            data.pop(key, None)
        else:
            data[key] = value
    return data


# --- tickets (SPEC §5.1) ------------------------------------------------------------------------


def test_ticket_message_is_create_order_with_the_configured_ids() -> None:
    vendor = {
        "card_title": "云客服_智齿客服",
        "card_url": "http://www.sobot.com",
        "card_desc": "云客服,在线客服系统,云呼叫中心,机器人客服,工单客服,智能客服",
        "card_note": "1500元",
        "card_picture": "https://img.sobot.com/console/common/face/admin.png",
    }
    message = build("ticket", vendor)
    assert message == {"type": "createOrder", "params": vendor}
    assert audit_kind(message) == "ticket"


def test_ticket_omits_empty_optional_fields() -> None:
    message = build("ticket", {"card_title": " 退款 ", "card_url": "", "card_desc": "  ", "card_note": None})
    assert message == {"type": "createOrder", "params": {"card_title": "退款"}}


def test_ticket_reports_every_problem_at_once() -> None:
    fields = [
        TicketField(id="title", label="标题", required=True),
        TicketField(id="kind", label="类别", type="select", options=[Option(value="a", label="甲")]),
        TicketField(id="due", label="日期", type="date"),
        TicketField(id="amount", label="金额", type="number"),
    ]
    data = {"title": "", "kind": "z", "due": "tomorrow", "amount": "1,5", "extra": "x"}
    assert problems_of("ticket", data, fields=fields) == [
        ("extra", "unknown_field"),
        ("title", "required"),
        ("kind", "not_an_option"),
        ("due", "bad_date"),
        ("amount", "not_number"),
    ]


# --- order card, classic (SPEC §5.2) ------------------------------------------------------------------

ORDER: dict[str, Any] = {
    "orderStatus": 1,
    "createTime": 1714550400000,
    "orderCode": "88888888",
    "orderUrl": "http://order.com/1",
    "totalFee": "100",
    "goodsCount": 2,
    "goods": [
        {"name": "商品名称1", "pictureUrl": "http://goods.example.cn/1.png"},
        {"name": "商品名称2", "pictureUrl": "http://goods.example.cn/2.png"},
    ],
}


def test_order_card_exact_message() -> None:
    message = build("order_card", ORDER)
    assert set(message) == {"cid", "uid", "msgType", "miniPage"}
    assert message["cid"] == "111111" and message["uid"] == "222222" and message["msgType"] == 25
    assert json.loads(message["miniPage"]) == ORDER
    assert message["miniPage"] == json.dumps(ORDER, ensure_ascii=False, separators=(",", ":"))
    assert "商品名称1" in message["miniPage"]  # Chinese is sent as is, not as \\u escapes
    assert audit_kind(message) == "order_card"


def _ok(**expected: Any) -> dict[str, Any]:
    return expected


ORDER_ROWS = [
    # orderStatus: 0-7
    pytest.param({"orderStatus": 7}, False, _ok(orderStatus=7), id="status-7"),
    pytest.param({"orderStatus": "2"}, False, _ok(orderStatus=2), id="status-digit-string"),
    pytest.param({"orderStatus": 8}, False, [("orderStatus", "too_big")], id="status-8"),
    pytest.param({"orderStatus": -1}, False, [("orderStatus", "too_small")], id="status-negative"),
    pytest.param({"orderStatus": True}, False, [("orderStatus", "not_integer")], id="status-bool"),
    pytest.param({"orderStatus": 1.5}, False, [("orderStatus", "not_integer")], id="status-fraction"),
    pytest.param({"orderStatus": DROP}, False, [("orderStatus", "required")], id="status-missing"),
    # statusCustom: required for 0, sent only for 0
    pytest.param({"orderStatus": 0, "statusCustom": "部分退款"}, False, _ok(orderStatus=0, statusCustom="部分退款"),
                 id="custom-status"),
    pytest.param({"orderStatus": 0}, False, [("statusCustom", "required")], id="custom-status-missing"),
    pytest.param({"orderStatus": 0, "statusCustom": "  "}, False, [("statusCustom", "required")],
                 id="custom-status-blank"),
    pytest.param({"statusCustom": "自定义状态"}, False, _ok(statusCustom=DROP), id="custom-status-dropped-for-1"),
    pytest.param({"orderStatus": 0, "statusCustom": "长" * 33}, False, [("statusCustom", "too_long")],
                 id="custom-status-too-long"),
    # createTime: ms
    pytest.param({"createTime": "1714550400000"}, False, _ok(createTime=1714550400000), id="time-digit-string"),
    pytest.param({"createTime": -5}, False, [("createTime", "too_small")], id="time-negative"),
    pytest.param({"createTime": 1.7e12}, False, [("createTime", "not_integer")], id="time-float"),
    pytest.param({"createTime": "昨天"}, False, [("createTime", "not_integer")], id="time-text"),
    # orderCode
    pytest.param({"orderCode": " SO-1 "}, False, _ok(orderCode="SO-1"), id="code-trimmed"),
    pytest.param({"orderCode": ""}, False, [("orderCode", "required")], id="code-empty"),
    pytest.param({"orderCode": 88888888}, False, [("orderCode", "not_text")], id="code-number"),
    pytest.param({"orderCode": "8" * 65}, False, [("orderCode", "too_long")], id="code-too-long"),
    pytest.param({"orderCode": "88\x0788"}, False, [("orderCode", "bad_characters")], id="code-control-char"),
    # orderUrl: http(s), or a mini-program page for a mini-program customer
    pytest.param({"orderUrl": "https://shop.example.cn/o/1?a=1&b=2"}, False,
                 _ok(orderUrl="https://shop.example.cn/o/1?a=1&b=2"), id="url-https"),
    pytest.param({"orderUrl": "https://shop.example.cn/订单 1"}, False,
                 _ok(orderUrl="https://shop.example.cn/%E8%AE%A2%E5%8D%95%201"), id="url-encoded"),
    pytest.param({"orderUrl": "ftp://order.com/1"}, False, [("orderUrl", "need_http_url")], id="url-ftp"),
    pytest.param({"orderUrl": "order.com/1"}, False, [("orderUrl", "need_http_url")], id="url-no-scheme"),
    pytest.param({"orderUrl": "pages/order/detail?id=1"}, False, [("orderUrl", "need_http_url")],
                 id="url-mini-path-off-mini"),
    pytest.param({"orderUrl": DROP}, False, [("orderUrl", "required")], id="url-missing"),
    pytest.param({"orderUrl": "pages/order/detail?id=1"}, True, _ok(orderUrl="pages/order/detail?id=1"),
                 id="mini-path"),
    pytest.param({"orderUrl": "/pages/order/detail"}, True, _ok(orderUrl="/pages/order/detail"),
                 id="mini-path-leading-slash"),
    pytest.param({}, True, [("orderUrl", "need_mini_path")], id="mini-http-refused"),
    pytest.param({"orderUrl": "pages/order detail"}, True, [("orderUrl", "need_mini_path")], id="mini-path-space"),
    # totalFee: fen as an integer string
    pytest.param({"totalFee": 1000}, False, _ok(totalFee="1000"), id="fee-int"),
    pytest.param({"totalFee": "0100"}, False, _ok(totalFee="100"), id="fee-leading-zero"),
    pytest.param({"totalFee": "0"}, False, _ok(totalFee="0"), id="fee-zero"),
    pytest.param({"totalFee": "10.00"}, False, [("totalFee", "fee_not_fen")], id="fee-decimal"),
    pytest.param({"totalFee": 10.0}, False, [("totalFee", "fee_not_fen")], id="fee-float"),
    pytest.param({"totalFee": -1}, False, [("totalFee", "fee_not_fen")], id="fee-negative"),
    pytest.param({"totalFee": "-1"}, False, [("totalFee", "fee_not_fen")], id="fee-negative-string"),
    pytest.param({"totalFee": "10元"}, False, [("totalFee", "fee_not_fen")], id="fee-unit"),
    pytest.param({"totalFee": False}, False, [("totalFee", "fee_not_fen")], id="fee-bool"),
    # goodsCount and goods
    pytest.param({"goodsCount": 5, "goods": []}, False, _ok(goodsCount=5, goods=[]), id="count-without-goods"),
    pytest.param({"goodsCount": 0, "goods": []}, False, [("goodsCount", "too_small")], id="count-zero"),
    pytest.param({"goodsCount": 3}, False, [("goodsCount", "goods_count_mismatch")], id="count-mismatch"),
    pytest.param({"goods": [{"name": "杯", "pictureUrl": ""}], "goodsCount": 1}, False,
                 _ok(goods=[{"name": "杯", "pictureUrl": ""}], goodsCount=1), id="goods-no-picture"),
    pytest.param({"goods": [{"name": "杯"}], "goodsCount": 1}, False,
                 _ok(goods=[{"name": "杯", "pictureUrl": ""}], goodsCount=1), id="goods-picture-key-filled"),
    pytest.param({"goods": [{"pictureUrl": "http://a.cn/1.png"}], "goodsCount": 1}, False,
                 [("goods[0].name", "required")], id="goods-name-missing"),
    pytest.param({"goods": [{"name": "杯", "pictureUrl": "/img/1.png"}], "goodsCount": 1}, False,
                 [("goods[0].pictureUrl", "need_http_url")], id="goods-relative-picture"),
    pytest.param({"goods": [{"name": "杯", "price": 1}], "goodsCount": 1}, False,
                 [("goods[0].price", "unknown_field")], id="goods-unknown-key"),
    pytest.param({"goods": "杯"}, False, [("goods", "not_list")], id="goods-not-list"),
    pytest.param({"goods": ["杯"], "goodsCount": 1}, False, [("goods[0]", "not_object")], id="goods-item-not-object"),
    pytest.param({"goods": [{"name": "杯"}] * 51, "goodsCount": 51}, False, [("goods", "too_many")],
                 id="goods-too-many"),
    # the order object itself
    pytest.param({"cid": "x"}, False, [("cid", "unknown_field")], id="unknown-key"),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "mini", "expected"), ORDER_ROWS)
def test_order_card_rules(changes: dict[str, Any], mini: bool, expected: Any) -> None:
    data = changed(ORDER, changes)
    if isinstance(expected, list):
        assert problems_of("order_card", data, mini=mini) == expected
        return
    page = json.loads(build("order_card", data, mini=mini)["miniPage"])
    assert page == changed(ORDER, expected)
    assert list(page)[:3] == ["orderStatus", "statusCustom", "createTime"] if "statusCustom" in page else True


def test_order_card_reports_every_field_problem_at_once() -> None:
    data = {"orderStatus": 9, "createTime": "x", "orderUrl": "ftp://a", "totalFee": "1.5", "goods": [{}], "z": 1}
    assert problems_of("order_card", data) == [
        ("orderStatus", "too_big"),
        ("createTime", "not_integer"),
        ("orderCode", "required"),
        ("orderUrl", "need_http_url"),
        ("totalFee", "fee_not_fen"),
        ("goodsCount", "required"),
        ("goods[0].name", "required"),
        ("z", "unknown_field"),
    ]


def test_card_too_large() -> None:
    goods = [{"name": "很" * 200, "pictureUrl": "https://a.cn/" + "p" * 100} for _ in range(20)]
    problems = problems_of("order_card", changed(ORDER, {"goods": goods, "goodsCount": 20}))
    assert problems == [("miniPage", "card_too_large")]


def test_payload_not_a_kind() -> None:
    assert problems_of("coupon", {}) == [("kind", "unknown_kind")]


# --- goods card, classic (SPEC §5.3) -----------------------------------------------------------------

GOODS: dict[str, Any] = {
    "title": "北京智齿科技股份有限公司吧嗒嘿",
    "url": "https://www.baidu.com",
    "description": "我是放羊的,你是砍柴的。 咱俩来玩一会儿,谁的损失大?",
    "label": "100元",
    "thumbnail": "https://img.sobot.com/chatres/msg/20190620/9583a4709ae147a690b459399d4afe57.png",
}


def test_goods_card_exact_message() -> None:
    message = build("goods_card", GOODS)
    assert message == {
        "cid": "111111",
        "uid": "222222",
        "msgType": 24,
        "miniPage": json.dumps(GOODS, ensure_ascii=False, separators=(",", ":")),
    }
    assert json.loads(message["miniPage"]) == GOODS
    assert "北京智齿" in message["miniPage"]
    assert audit_kind(message) == "goods_card"


GOODS_ROWS = [
    pytest.param({"description": DROP, "label": DROP, "thumbnail": DROP}, False,
                 _ok(description="", label="", thumbnail=""), id="only-title-and-url"),
    pytest.param({"title": ""}, False, [("title", "required")], id="title-empty"),
    pytest.param({"title": "长" * 201}, False, [("title", "too_long")], id="title-too-long"),
    pytest.param({"url": DROP}, False, [("url", "required")], id="url-missing"),
    pytest.param({"url": "https://shop.cn/p?id=1&from=客服"}, False, _ok(url="https://shop.cn/p?id=1&from=%E5%AE%A2%E6%9C%8D"),
                 id="url-encoded"),
    pytest.param({"url": "javascript:alert(1)"}, False, [("url", "need_http_url")], id="url-javascript"),
    pytest.param({"url": "pages/goods/detail?id=1"}, False, [("url", "need_http_url")], id="mini-path-off-mini"),
    pytest.param({"url": "pages/goods/detail?id=1"}, True, _ok(url="pages/goods/detail?id=1"), id="mini-path"),
    pytest.param({}, True, _ok(), id="mini-customer-http-link"),
    pytest.param({"thumbnail": "data:image/png;base64,AAAA"}, False, [("thumbnail", "need_http_url")],
                 id="thumbnail-data-url"),
    pytest.param({"description": "长" * 501}, False, [("description", "too_long")], id="description-too-long"),
    pytest.param({"label": 100}, False, [("label", "not_text")], id="label-number"),
    pytest.param({"price": "1"}, False, [("price", "unknown_field")], id="unknown-key"),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "mini", "expected"), GOODS_ROWS)
def test_goods_card_rules(changes: dict[str, Any], mini: bool, expected: Any) -> None:
    data = changed(GOODS, changes)
    if isinstance(expected, list):
        assert problems_of("goods_card", data, mini=mini) == expected
        return
    page = json.loads(build("goods_card", data, mini=mini)["miniPage"])
    assert page == changed(GOODS, expected)
    assert list(page) == ["title", "url", "description", "label", "thumbnail"]


# --- the V6 general card (SPEC §5.4) ------------------------------------------------------------------

CUSTOM: dict[str, Any] = {"customCardName": "保温杯", "customCardThumbnail": "https://a.cn/cup.png"}
V6_ORDER: dict[str, Any] = {
    "cardId": "order-SO1",
    "cardType": 0,
    "customCards": [
        {
            **CUSTOM,
            "customCardAmount": "99.00",
            "customCardAmountSymbol": "¥",
            "customCardStatus": "待发货",
            "customCardCount": "1",
            "customCardCode": "SO1",
            "customCardTime": "2025-03-12 10:00:00",
        }
    ],
}


def test_general_card_exact_message() -> None:
    message = build("order_card", V6_ORDER, fmt="v6")
    assert set(message) == {"cid", "uid", "msgType", "miniPage"} and message["msgType"] == 28
    assert json.loads(message["miniPage"]) == {
        "cardId": "order-SO1",
        "cardStyle": 1,
        "cardType": 0,
        "customCards": V6_ORDER["customCards"],
        "cardTrigger": 1,
    }
    assert "保温杯" in message["miniPage"] and "¥" in message["miniPage"]
    assert audit_kind(message) == "order_card"
    goods = build("goods_card", {"customCards": [CUSTOM]}, fmt="v6")
    assert audit_kind(goods) == "goods_card"
    assert json.loads(goods["miniPage"])["cardType"] == 1


def test_general_card_menus_keep_only_their_keys() -> None:
    menus = [
        {"menuType": 0, "menuName": "查看", "menuLink": "https://a.cn/x?y=1", "menuTip": "x"},
        {"menuType": 1, "menuName": "确认", "menuTip": "确认收货？", "menuLink": "https://a.cn"},
        {"menuName": "发送"},
    ]
    page = json.loads(build("goods_card", {"customCards": [CUSTOM], "cardMenus": menus}, fmt="v6")["miniPage"])
    assert page["cardMenus"] == [
        {"menuType": 0, "menuName": "查看", "menuLink": "https://a.cn/x?y=1", "menuLinkType": 0},
        {"menuType": 1, "menuName": "确认", "menuTip": "确认收货？"},
        {"menuType": 2, "menuName": "发送"},
    ]


V6_ROWS = [
    pytest.param("order_card", {"cardId": DROP}, _ok(cardId="order-SO1"), id="card-id-from-order-code"),
    pytest.param("goods_card", {"cardId": DROP, "cardType": DROP, "customCards": [CUSTOM]},
                 _ok(cardId="goods-" + cards.card_slug("保温杯"), cardType=1, customCards=[CUSTOM]),
                 id="card-id-from-name"),
    pytest.param("order_card", {"cardId": "x" * 65}, [("cardId", "too_long")], id="card-id-too-long"),
    pytest.param("order_card", {"cardType": 1}, [("cardType", "card_type_mismatch")], id="card-type-mismatch"),
    pytest.param("order_card", {"cardType": 2}, [("cardType", "too_big")], id="card-type-2"),
    pytest.param("order_card", {"cardType": DROP}, _ok(), id="card-type-from-kind"),
    pytest.param("order_card", {"cardStyle": 0}, _ok(cardStyle=0), id="tiled"),
    pytest.param("order_card", {"cardStyle": 2}, [("cardStyle", "too_big")], id="style-2"),
    pytest.param("order_card", {"cardTrigger": 2}, _ok(cardTrigger=2), id="trigger-both"),
    pytest.param("order_card", {"cardTrigger": 3}, [("cardTrigger", "too_big")], id="trigger-3"),
    pytest.param("order_card", {"cardGuide": "您的订单", "cardDesc": "说明", "cardImg": "https://a.cn/i.png",
                                "cardLink": "https://a.cn/o", "customField": {"物流": "顺丰"}},
                 _ok(cardGuide="您的订单", cardDesc="说明", cardImg="https://a.cn/i.png", cardLink="https://a.cn/o",
                     customField={"物流": "顺丰"}), id="list-style-extras"),
    pytest.param("order_card", {"cardStyle": 0, "cardGuide": "您的订单", "customField": {"a": "b"},
                                "cardMenus": [{"menuName": "发送"}]},
                 [("cardGuide", "list_style_only"), ("customField", "list_style_only"),
                  ("cardMenus", "list_style_only")], id="tiled-refuses-list-extras"),
    pytest.param("order_card", {"cardImg": "/img/x.png"}, [("cardImg", "need_http_url")], id="card-img-relative"),
    pytest.param("order_card", {"customField": {str(i): "v" for i in range(10)}},
                 _ok(customField={str(i): "v" for i in range(10)}), id="custom-field-10"),
    pytest.param("order_card", {"customField": {str(i): "v" for i in range(11)}}, [("customField", "too_many")],
                 id="custom-field-11"),
    pytest.param("order_card", {"customField": {"a": 1}}, [("customField.a", "not_text")],
                 id="custom-field-value-number"),
    pytest.param("order_card", {"customCards": [{"customCardName": "杯"}]},
                 [("customCards[0].customCardThumbnail", "required")], id="custom-card-thumbnail-missing"),
    pytest.param("order_card", {"customCards": [{"customCardThumbnail": "https://a.cn/1.png"}]},
                 [("customCards[0].customCardName", "required")], id="custom-card-name-missing"),
    pytest.param("order_card", {"customCards": [{**CUSTOM, "customCardThumbnail": "cup.png"}]},
                 [("customCards[0].customCardThumbnail", "need_http_url")], id="custom-card-thumbnail-relative"),
    pytest.param("order_card", {"customCards": [{**CUSTOM, "customCardCount": 2, "customCardAmount": 9.5}]},
                 _ok(customCards=[{**CUSTOM, "customCardCount": "2", "customCardAmount": "9.5"}]),
                 id="custom-card-numbers-as-text"),
    pytest.param("goods_card", {"cardType": 1}, [("customCards[0].customCardStatus", "order_only"),
                 ("customCards[0].customCardCount", "order_only"), ("customCards[0].customCardCode", "order_only"),
                 ("customCards[0].customCardTime", "order_only")], id="goods-card-refuses-order-fields"),
    pytest.param("order_card", {"customCards": [CUSTOM] * 11}, [("customCards", "too_many")], id="custom-cards-11"),
    pytest.param("order_card", {"customCards": []}, [("customCards", "card_empty")], id="empty-card"),
    pytest.param("order_card", {"customCards": [], "cardGuide": "您的订单"},
                 _ok(customCards=DROP, cardGuide="您的订单"), id="guide-only-card"),
    pytest.param("order_card", {"cardMenus": [{"menuName": "发送"}] * 3}, _ok(cardMenus=[{"menuType": 2,
                 "menuName": "发送"}] * 3), id="menus-3"),
    pytest.param("order_card", {"cardMenus": [{"menuName": "发送"}] * 4}, [("cardMenus", "too_many")], id="menus-4"),
    pytest.param("order_card", {"cardMenus": [{"menuType": 3, "menuName": "x"}]},
                 [("cardMenus[0].menuType", "too_big")], id="menu-type-3"),
    pytest.param("order_card", {"cardMenus": [{"menuType": 2}]}, [("cardMenus[0].menuName", "required")],
                 id="menu-name-missing"),
    pytest.param("order_card", {"cardMenus": [{"menuType": 0, "menuName": "看"}]},
                 [("cardMenus[0].menuLink", "required")], id="link-menu-without-link"),
    pytest.param("order_card", {"cardMenus": [{"menuType": 0, "menuName": "看", "menuLink": "a.cn"}]},
                 [("cardMenus[0].menuLink", "need_http_url")], id="link-menu-bad-link"),
    pytest.param("order_card", {"cardMenus": [{"menuType": 0, "menuName": "看", "menuLink": "https://a.cn",
                                               "menuLinkType": 2}]},
                 _ok(cardMenus=[{"menuType": 0, "menuName": "看", "menuLink": "https://a.cn", "menuLinkType": 2}]),
                 id="link-menu-visitor-only"),
    pytest.param("order_card", {"cardMenus": [{"menuType": 0, "menuName": "看", "menuLink": "https://a.cn",
                                               "menuLinkType": 3}]},
                 [("cardMenus[0].menuLinkType", "too_big")], id="link-menu-type-3"),
    pytest.param("order_card", {"cardMenus": [{"menuName": "长" * 21}]}, [("cardMenus[0].menuName", "too_long")],
                 id="menu-name-too-long"),
    pytest.param("order_card", {"customCards": [{**CUSTOM, "customMenus": [{"menuType": 0, "menuName": "看"}]}]},
                 [("customCards[0].customMenus[0].menuLink", "required")], id="custom-menu-without-link"),
    pytest.param("order_card", {"customCards": [{**CUSTOM, "customMenus": [{"menuName": "x"}] * 4}]},
                 [("customCards[0].customMenus", "too_many")], id="custom-menus-4"),
    pytest.param("order_card", {"orderCode": "SO1"}, [("orderCode", "unknown_field")], id="classic-key-in-v6"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "changes", "expected"), V6_ROWS)
def test_general_card_rules(kind: str, changes: dict[str, Any], expected: Any) -> None:
    data = changed(V6_ORDER, changes)
    if isinstance(expected, list):
        assert problems_of(kind, data, fmt="v6") == expected
        return
    page = json.loads(build(kind, data, fmt="v6")["miniPage"])
    want = changed({**V6_ORDER, "cardStyle": 1, "cardTrigger": 1}, expected)
    assert page == want
    assert list(page) == [name for name in cards.GeneralCard.model_fields if name in page]


def test_general_card_links_follow_the_channel() -> None:
    card = {"customCards": [{**CUSTOM, "customCardLink": "pages/goods/detail?id=1"}]}
    page = json.loads(build("goods_card", card, fmt="v6", mini=True)["miniPage"])
    assert page["customCards"][0]["customCardLink"] == "pages/goods/detail?id=1"
    assert problems_of("goods_card", card, fmt="v6") == [("customCards[0].customCardLink", "need_http_url")]


# --- audit kind (CONTRACT) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        pytest.param({"type": "createOrder", "params": {}}, "ticket", id="create-order"),
        pytest.param({"msgType": 25, "miniPage": "{}"}, "order_card", id="msg-25"),
        pytest.param({"msgType": 24, "miniPage": "{}"}, "goods_card", id="msg-24"),
        pytest.param({"msgType": 28, "miniPage": '{"cardType":0}'}, "order_card", id="msg-28-order"),
        pytest.param({"msgType": 28, "miniPage": '{"cardType":1}'}, "goods_card", id="msg-28-goods"),
        pytest.param({"msgType": 28, "miniPage": '{"cardId":"x"}'}, "goods_card", id="msg-28-default-goods"),
    ],
)
def test_audit_kind(message: dict[str, Any], kind: str) -> None:
    assert audit_kind(message) == kind


def test_audit_kind_refuses_other_messages() -> None:
    with pytest.raises(ValueError):
        audit_kind({"msgType": 1})


# --- pre-builders ----------------------------------------------------------------------------------------

BASE = "https://panel.example.cn"
DIRECTORY_ORDER: dict[str, Any] = {
    "orderCode": "SO20250312001",
    "status": 0,
    "statusText": "部分退款",
    "createTime": 1741744800000,  # 2025-03-12 10:00:00 in China
    "totalFee": 25900,
    "url": "https://shop.example.cn/orders/SO20250312001",
    "goods": [
        {"name": "静享降噪耳机", "pictureUrl": "/static/img/headphones.svg"},
        {"name": "青瓷保温杯", "pictureUrl": "https://cdn.example.cn/cup.png"},
    ],
}
DIRECTORY_PRODUCT: dict[str, Any] = {
    "title": "静享降噪耳机 Pro",
    "url": "https://shop.example.cn/p/jingxiang-pro",
    "description": "主动降噪，续航 40 小时",
    "label": "899元",
    "thumbnail": "/static/img/headphones.svg",
}


def test_order_card_from_order() -> None:
    data = order_card_from_order(DIRECTORY_ORDER, base_url=BASE + "/")
    assert data == {
        "orderStatus": 0,
        "statusCustom": "部分退款",
        "createTime": 1741744800000,
        "orderCode": "SO20250312001",
        "orderUrl": "https://shop.example.cn/orders/SO20250312001",
        "totalFee": "25900",
        "goodsCount": 2,
        "goods": [
            {"name": "静享降噪耳机", "pictureUrl": "https://panel.example.cn/static/img/headphones.svg"},
            {"name": "青瓷保温杯", "pictureUrl": "https://cdn.example.cn/cup.png"},
        ],
    }
    assert json.loads(build("order_card", data)["miniPage"]) == data
    shipped = order_card_from_order({**DIRECTORY_ORDER, "status": 2}, base_url=BASE)
    assert "statusCustom" not in shipped and shipped["orderStatus"] == 2


def test_goods_card_from_product() -> None:
    data = goods_card_from_product(DIRECTORY_PRODUCT, base_url=BASE)
    assert data == {**DIRECTORY_PRODUCT, "thumbnail": "https://panel.example.cn/static/img/headphones.svg"}
    assert json.loads(build("goods_card", data)["miniPage"]) == data


def test_general_card_from_order() -> None:
    data = general_card_from_order(DIRECTORY_ORDER, base_url=BASE)
    assert data == {
        "cardId": "order-SO20250312001",
        "cardStyle": 1,
        "cardType": 0,
        "customCards": [
            {
                "customCardId": "SO20250312001",
                "customCardName": "静享降噪耳机",
                "customCardThumbnail": "https://panel.example.cn/static/img/headphones.svg",
                "customCardAmount": "259.00",
                "customCardAmountSymbol": "¥",
                "customCardLink": "https://shop.example.cn/orders/SO20250312001",
                "customCardDesc": "静享降噪耳机、青瓷保温杯",
                "customCardStatus": "部分退款",
                "customCardCount": "2",
                "customCardCode": "SO20250312001",
                "customCardTime": "2025-03-12 10:00:00",
            }
        ],
    }
    assert json.loads(build("order_card", data, fmt="v6")["miniPage"]) == {**data, "cardTrigger": 1}


def test_general_card_status_words_come_from_the_caller() -> None:
    order = {**DIRECTORY_ORDER, "status": 2, "statusText": ""}
    assert general_card_from_order(order, base_url=BASE)["customCards"][0]["customCardStatus"] == "2"
    words = {2: "待发货"}
    card = general_card_from_order(order, base_url=BASE, status_texts=words)
    assert card["customCards"][0]["customCardStatus"] == "待发货"
    assert ticket_prefill_from_order(order, status_texts=words)["order_status"] == "待发货"


def test_general_card_from_product() -> None:
    data = general_card_from_product(DIRECTORY_PRODUCT, base_url=BASE)
    assert data["cardType"] == 1 and data["cardId"].startswith("goods-")
    assert data["customCards"] == [
        {
            "customCardName": "静享降噪耳机 Pro",
            "customCardThumbnail": "https://panel.example.cn/static/img/headphones.svg",
            "customCardAmount": "899元",
            "customCardLink": "https://shop.example.cn/p/jingxiang-pro",
            "customCardDesc": "主动降噪，续航 40 小时",
        }
    ]
    assert data == general_card_from_product(DIRECTORY_PRODUCT, base_url=BASE)  # deterministic id
    assert audit_kind(build("goods_card", data, fmt="v6")) == "goods_card"


def test_ticket_prefill_from_order_maps_every_card_field() -> None:
    assert ticket_prefill_from_order(DIRECTORY_ORDER, base_url=BASE) == {
        "order_status": "部分退款",
        "goods_count": "2",
        "order_code": "SO20250312001",
        "create_time": "2025-03-12 10:00:00",
        "card_title": "静享降噪耳机",
        "card_picture": "https://panel.example.cn/static/img/headphones.svg",
        "card_url": "https://shop.example.cn/orders/SO20250312001",
        "card_desc": "静享降噪耳机、青瓷保温杯",
    }
    assert set(ticket_prefill_from_order({})) == set(card_builders.CARD_TO_TICKET.values())


def test_prefilled_ticket_is_accepted() -> None:
    prefill = ticket_prefill_from_order(DIRECTORY_ORDER, base_url=BASE)
    fields = list(DEFAULT_TICKET_FIELDS)
    data = {f.id: prefill[f.id] for f in fields if f.id in prefill}
    assert build("ticket", data, fields=fields)["params"]["card_picture"].startswith("https://panel.example.cn/")


def _sample_customers() -> list[dict[str, Any]]:
    path = ROOT / "web" / "sample" / "customers.json"
    if not path.exists():
        return [{"channel": "web", "orders": [DIRECTORY_ORDER], "products": [DIRECTORY_PRODUCT]}]
    document = json.loads(path.read_text(encoding="utf-8"))
    customers = document["customers"] if isinstance(document, dict) else document
    return list(customers.values()) if isinstance(customers, dict) else list(customers)


@pytest.mark.parametrize("customer", _sample_customers(), ids=lambda c: str(c.get("partnerId", "fixture")))
def test_sample_directory_round_trips(customer: dict[str, Any]) -> None:
    mini = customer.get("channel") == "miniprogram"
    for order in customer.get("orders", []):
        data = order_card_from_order(order, base_url=BASE)
        assert json.loads(build("order_card", data, mini=mini)["miniPage"]) == data
        general = general_card_from_order(order, base_url=BASE)
        assert audit_kind(build("order_card", general, fmt="v6", mini=mini)) == "order_card"
    for product in customer.get("products", []):
        data = goods_card_from_product(product, base_url=BASE)
        assert json.loads(build("goods_card", data, mini=mini)["miniPage"]) == data
        general = general_card_from_product(product, base_url=BASE)
        assert audit_kind(build("goods_card", general, fmt="v6", mini=mini)) == "goods_card"


# --- the catalog and arbitrary input ---------------------------------------------------------------------


def test_every_code_a_card_can_raise_is_in_the_catalog() -> None:
    codes = set(cards.CUSTOM_CODES) | {code for code, _, _ in cards._GENERIC.values()}
    codes |= {"invalid_value", "goods_count_mismatch", "card_too_large", "card_type_mismatch", "list_style_only"}
    codes |= {"order_only", "card_empty", "unknown_kind", "ticket_empty", "not_number", "bad_date", "not_an_option"}
    cards_json = json.loads((ROOT / "web" / "i18n" / "cards.json").read_text(encoding="utf-8"))
    for code in codes | set(cards_json):
        for lang in LANGS:
            assert CATALOG.text(code, lang) != code, (code, lang)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
KEYS = sorted({*ORDER, *GOODS, *V6_ORDER, "cardMenus", "customField", "cardStyle", "card_title", "card_url"})
BASES = [ORDER, GOODS, V6_ORDER, {"customCards": [CUSTOM]}, {"card_title": "x"}, {}]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["ticket", "order_card", "goods_card", "other"]),
    fmt=st.sampled_from(["classic", "v6"]),
    mini=st.booleans(),
    base=st.sampled_from(BASES),
    overrides=st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), json_like, max_size=5),
)
def test_build_message_only_ever_raises_payload_error(
    kind: str, fmt: str, mini: bool, base: dict[str, Any], overrides: dict[str, Any]
) -> None:
    try:
        message = build(kind, {**base, **overrides}, fmt=fmt, mini=mini)
    except PayloadError as error:
        assert_in_catalog(error.problems)
        return
    json.dumps(message, ensure_ascii=False).encode("utf-8")
    assert audit_kind(message) in ("ticket", "order_card", "goods_card")
