"""Ticket custom fields (SPEC §5.1): the built-in example, JSON/TOML files, and each field's value rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sobot_panel.protocol.ticket_fields import (
    DEFAULT_TICKET_FIELDS,
    Option,
    TicketField,
    clean_ticket,
    encode_uri,
    load_ticket_fields,
)

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "web" / "sample" / "ticket-fields.toml"


def test_default_fields_are_the_vendor_example() -> None:
    fields = load_ticket_fields(None)
    assert [f.id for f in fields] == ["card_title", "card_url", "card_desc", "card_note", "card_picture"]
    assert [f.type for f in fields] == ["text", "url", "textarea", "text", "url"]
    assert [f.id for f in fields if f.required] == ["card_title"]
    assert all(f.label and f.label_en for f in fields)
    assert fields is not load_ticket_fields(None)  # a fresh list each time


def test_sample_toml_loads() -> None:
    fields = load_ticket_fields(SAMPLE)
    by_id = {f.id: f for f in fields}
    assert [o.label for o in by_id["category"].options] == ["咨询", "投诉", "售后"]
    assert all(o.label_en for o in by_id["category"].options)
    assert by_id["priority"].type == "select"
    assert by_id["contact_phone"].prefill == "customer.phone"
    assert by_id["card_desc"].type == "textarea"
    assert by_id["due_date"].type == "date"
    assert "order_code" in by_id


FIELDS = [
    {"id": "title", "label": "标题", "required": True},
    {"id": "kind", "label": "类别", "type": "select", "options": [{"value": "a", "label": "甲", "label_en": "A"}]},
]


@pytest.mark.parametrize("document", [FIELDS, {"fields": FIELDS}], ids=["list", "object"])
def test_json_file_loads(tmp_path: Path, document: object) -> None:
    path = tmp_path / "fields.json"
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    fields = load_ticket_fields(path)
    assert fields == [
        TicketField(id="title", label="标题", required=True),
        TicketField(id="kind", label="类别", type="select", options=[Option(value="a", label="甲", label_en="A")]),
    ]


TOML_HEAD = '[[fields]]\nid = "title"\nlabel = "标题"\n\n'


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        pytest.param("f.toml", TOML_HEAD + '[[fields]]\nid = "x"\nlabel = "X"\ntype = "checkbox"\n', "fields[1].type",
                     id="bad-type"),
        pytest.param("f.toml", '[[fields]]\nid = "x"\nlabel = "X"\ntype = "select"\n',
                     "fields[0]: a select field needs", id="select-without-options"),
        pytest.param("f.toml", TOML_HEAD + TOML_HEAD, "fields[1].id: 'title' is used twice", id="duplicate-id"),
        pytest.param("f.toml", '[[fields]]\nid = "9bad"\nlabel = "X"\n', "fields[0].id", id="bad-id"),
        pytest.param("f.toml", '[[fields]]\nid = "a b"\nlabel = "X"\n', "fields[0].id", id="id-with-space"),
        pytest.param("f.toml", '[[fields]]\nid = "x"\nlabel = ""\n', "fields[0].label", id="empty-label"),
        pytest.param("f.toml", '[[fields]]\nid = "x"\nlabel = "X"\nprefill = "customer.salary"\n',
                     "fields[0].prefill", id="bad-prefill"),
        pytest.param("f.toml", '[[fields]]\nid = "x"\nlabel = "X"\noptions = [{value = "a", label = "A"}]\n',
                     "options only apply to select", id="options-on-text"),
        pytest.param("f.toml", '[[fields]]\nid = "x"\nlabel = "X"\ntype = "select"\noptions = [{value = "a", label '
                     '= "A"}, {value = "a", label = "B"}]\n', "option values must be unique", id="duplicate-option"),
        pytest.param("f.toml", '[[fields]]\nid = "x"\nlabel = "X"\nmax_length = 0\n', "fields[0].max_length",
                     id="max-length-zero"),
        pytest.param("f.toml", '[[fields]]\nid = "x"\nlabel = "X"\nmax_length = 10001\n', "fields[0].max_length",
                     id="max-length-huge"),
        pytest.param("f.toml", '[[fields]]\nid = "x"\nlabel = "X"\ncolour = "red"\n', "fields[0].colour",
                     id="unknown-key"),
        pytest.param("f.toml", 'title = "x"\n', "unexpected key 'title'", id="unknown-top-level-key"),
        pytest.param("f.toml", "", "expected a list of fields", id="no-fields"),
        pytest.param("f.json", "[]", "lists no fields", id="empty-list"),
        pytest.param("f.json", "[{", "not valid JSON", id="bad-json"),
        pytest.param("f.toml", "[[fields]\n", "not valid TOML", id="bad-toml"),
        pytest.param("f.yaml", "- id: x\n", "must end in .json or .toml", id="bad-suffix"),
        pytest.param("f.json", '"fields"', "expected a list of fields", id="json-string"),
    ],
)  # fmt: skip
def test_bad_files_give_one_line_naming_file_and_field(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as info:
        load_ticket_fields(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"ticket fields file {name}: ")
    assert expected in message


def test_unreadable_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_bytes(b"\xff\xfe[")
    with pytest.raises(ValueError, match=r"^ticket fields file f\.json: cannot read it"):
        load_ticket_fields(path)


SELECT = TicketField(
    id="kind", label="类别", type="select", options=[Option(value="a", label="甲"), Option(value="b", label="乙")]
)


@pytest.mark.parametrize(
    ("field", "raw", "value", "codes"),
    [
        pytest.param(TicketField(id="t", label="T"), "  hello ", "hello", [], id="text-trimmed"),
        pytest.param(TicketField(id="t", label="T"), "", "", [], id="text-optional-empty"),
        pytest.param(TicketField(id="t", label="T"), None, "", [], id="text-optional-null"),
        pytest.param(TicketField(id="t", label="T", required=True), "x", "x", [], id="required-present"),
        pytest.param(TicketField(id="t", label="T", required=True), "   ", "", ["required"], id="required-blank"),
        pytest.param(TicketField(id="t", label="T"), 12, "", ["not_text"], id="not-text"),
        pytest.param(TicketField(id="t", label="T"), "a\x00b", "", ["bad_characters"], id="control-character"),
        pytest.param(TicketField(id="t", label="T", max_length=3), "abc", "abc", [], id="max-length-ok"),
        pytest.param(TicketField(id="t", label="T", max_length=3), "abcd", "", ["too_long"], id="max-length-over"),
        pytest.param(TicketField(id="t", label="T", max_length=3), "智齿客", "智齿客", [], id="max-length-chinese"),
        pytest.param(TicketField(id="t", label="T", type="textarea"), "一\n二", "一\n二", [], id="textarea-newline"),
        pytest.param(TicketField(id="u", label="U", type="url"), "https://a.cn/x?y=1", "https://a.cn/x?y=1", [],
                     id="url-https"),
        pytest.param(TicketField(id="u", label="U", type="url"), "http://a.cn/商品", "http://a.cn/%E5%95%86%E5%93%81",
                     [], id="url-encoded"),
        pytest.param(TicketField(id="u", label="U", type="url"), "ftp://a.cn/x", "", ["need_http_url"], id="url-ftp"),
        pytest.param(TicketField(id="u", label="U", type="url"), "www.a.cn", "", ["need_http_url"], id="url-no-scheme"),
        pytest.param(TicketField(id="u", label="U", type="url"), "https://", "", ["need_http_url"], id="url-no-host"),
        pytest.param(TicketField(id="n", label="N", type="number"), "15.00", "15.00", [], id="number-decimal"),
        pytest.param(TicketField(id="n", label="N", type="number"), "-3", "-3", [], id="number-negative"),
        pytest.param(TicketField(id="n", label="N", type="number"), "1500元", "", ["not_number"], id="number-unit"),
        pytest.param(TicketField(id="n", label="N", type="number"), "NaN", "", ["not_number"], id="number-nan"),
        pytest.param(TicketField(id="n", label="N", type="number"), "1e5", "", ["not_number"], id="number-exponent"),
        pytest.param(TicketField(id="d", label="D", type="date"), "2024-02-29", "2024-02-29", [], id="date-ok"),
        pytest.param(TicketField(id="d", label="D", type="date"), "2023-02-29", "", ["bad_date"], id="date-invalid"),
        pytest.param(TicketField(id="d", label="D", type="date"), "2024/02/01", "", ["bad_date"], id="date-format"),
        pytest.param(SELECT, "b", "b", [], id="select-option"),
        pytest.param(SELECT, "乙", "", ["not_an_option"], id="select-label-is-not-value"),
    ],
)  # fmt: skip
def test_field_value_rules(field: TicketField, raw: object, value: str, codes: list[str]) -> None:
    got, problems = field.check(raw)
    assert got == value
    assert [code for _, code, _ in problems] == codes
    assert all(where == field.id for where, _, _ in problems)


def test_clean_ticket_keeps_configured_ids_in_order_and_omits_empty() -> None:
    fields = list(DEFAULT_TICKET_FIELDS)
    params, problems = clean_ticket(
        {"card_note": "1500元", "card_title": " 云客服_智齿客服 ", "card_desc": "", "card_url": "http://www.sobot.com"},
        fields,
    )
    assert problems == []
    assert params == {"card_title": "云客服_智齿客服", "card_url": "http://www.sobot.com", "card_note": "1500元"}
    assert list(params) == ["card_title", "card_url", "card_note"]


def test_clean_ticket_reports_every_problem() -> None:
    _, problems = clean_ticket(
        {"card_title": "", "card_url": "sobot.com", "card_picture": "ftp://x", "nope": "1"}, list(DEFAULT_TICKET_FIELDS)
    )
    assert problems == [
        ("nope", "unknown_field", {}),
        ("card_title", "required", {}),
        ("card_url", "need_http_url", {}),
        ("card_picture", "need_http_url", {}),
    ]


def test_clean_ticket_refuses_an_empty_ticket() -> None:
    fields = [TicketField(id="note", label="备注")]
    assert clean_ticket({"note": " "}, fields) == ({}, [("data", "ticket_empty", {})])


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("https://a.cn/x?y=1&z=2#f", "https://a.cn/x?y=1&z=2#f", id="unchanged"),
        pytest.param("https://a.cn/a b", "https://a.cn/a%20b", id="space"),
        pytest.param("https://a.cn/%E4%B8%AD", "https://a.cn/%E4%B8%AD", id="escapes-kept"),
        pytest.param("https://a.cn/100%", "https://a.cn/100%25", id="lone-percent"),
        pytest.param("https://a.cn/中", "https://a.cn/%E4%B8%AD", id="non-ascii"),
    ],
)
def test_encode_uri(url: str, expected: str) -> None:
    assert encode_uri(url) == expected
    assert encode_uri(expected) == expected  # idempotent


def test_field_model_is_frozen_and_strict() -> None:
    field = TicketField(id="x", label="X")
    with pytest.raises(ValueError):
        field.label = "Y"  # type: ignore[misc]
    with pytest.raises(ValueError):
        TicketField(id="x", label="X", colour="red")  # type: ignore[call-arg]
