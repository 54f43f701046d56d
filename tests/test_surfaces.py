"""Query parsing for the eight surfaces (SPEC §2): names, types, zc_encode, and clear 400s."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sobot_panel.errors import NotFound, PanelError, QueryError
from sobot_panel.protocol.signing import SignPolicy, sign_fields, verify_sign
from sobot_panel.protocol.surfaces import (
    MODELS,
    CallContext,
    IvrStep,
    Surface,
    View,
    WecomContext,
    WorkbenchContext,
    build_query_string,
    parse_fields,
    parse_query_string,
    parse_surface,
    parse_view,
    zc_encode_blob,
)

IVR = '[{"navKey":"1","navName":"售前咨询"},{"navKey":"#","navName":"人工[VIP]&优先"}]'
POLICY = SignPolicy(sys_num="acme", secret="k", wecom_secret=None, max_age_s=300)
NOW = 1_764_000_000_000


def test_every_surface_has_exactly_the_spec_fields() -> None:
    expected = {
        Surface.WORKBENCH: {"partnerId", "email", "sign", "timestamp", "createChatTime", "uid", "cid", "params",
                            "groupId", "groupName"},
        Surface.CALL: {"partnerId", "callId", "email", "sign", "timestamp", "uid", "uphone", "uemail", "ivrPath",
                       "province", "city"},
        Surface.CALL_TASK: {"email", "sign", "timestamp", "uid", "uphone", "uemail"},
        Surface.TICKET: {"email", "sign", "timestamp", "uid", "uphone", "uemail", "ticketId"},
        Surface.CUSTOMER: {"partnerId", "email", "sign", "timestamp", "uid", "uphone", "uemail"},
        Surface.QA: {"partnerId", "email", "sign", "timestamp", "uid", "cid", "uphone", "uemail"},
        Surface.MONITOR: {"partnerId", "email", "sign", "timestamp", "uid", "cid", "uphone", "uemail"},
        Surface.WECOM: {"corpId", "userId", "partnerId", "serviceId", "serviceRoleId", "wxUnionId",
                        "wxBuildUnionId", "tel", "serviceTel", "timeStamp", "sign", "companyId"},
    }  # fmt: skip
    for surface, names in expected.items():
        assert set(MODELS[surface].FIELD_NAMES) == names, surface


def test_workbench_types() -> None:
    query = build_query_string({"partnerId": "C1", "timestamp": "1764000000123", "createChatTime": "1763999000000",
                                "params": '{"vip":"是","n":2}', "groupName": "售前 一组"})  # fmt: skip
    context = parse_query_string(Surface.WORKBENCH, query)
    assert isinstance(context, WorkbenchContext)
    assert context.timestamp == 1_764_000_000_123 and context.createChatTime == 1_763_999_000_000
    assert context.params == {"vip": "是", "n": 2}
    assert context.groupName == "售前 一组"
    assert context.fields["params"] == '{"vip":"是","n":2}'


def test_vendor_url_form_with_leading_ampersand_and_raw_json() -> None:
    """SPEC §4: `url?&params={"key":"value"}&partnerid=zc&uid=xxx`, as the browser sends it."""
    raw = "&params=%7B%22key%22:%22value%22%7D&partnerid=zc&uid=xxx"
    context = parse_query_string(Surface.WORKBENCH, raw)
    assert context.partner_id == "zc" and context.user_id == "xxx" and context.params == {"key": "value"}


@pytest.mark.parametrize("name", ["partnerid", "PARTNERID", "partnerId", "PartnerId"])
def test_names_are_case_insensitive(name: str) -> None:
    assert parse_query_string(Surface.CUSTOMER, f"{name}=C9").partner_id == "C9"


def test_plus_stays_a_plus() -> None:
    assert parse_query_string(Surface.CUSTOMER, "email=a+b%40x.cn").agent == "a+b@x.cn"


def test_call_ivr_path_is_a_list_of_steps() -> None:
    context = parse_query_string(Surface.CALL, build_query_string({"ivrPath": IVR, "province": "浙江", "city": "杭州"}))
    assert isinstance(context, CallContext)
    assert context.ivrPath == [IvrStep(navKey="1", navName="售前咨询"), IvrStep(navKey="#", navName="人工[VIP]&优先")]
    assert ("location", "浙江 杭州") in context.display_fields()
    municipality = parse_query_string(Surface.CALL, build_query_string({"province": "上海", "city": "上海"}))
    assert ("location", "上海") in municipality.display_fields()


@pytest.mark.parametrize("surface", list(Surface), ids=str)
def test_zc_encode_blob_on_every_surface(surface: Surface) -> None:
    fields = {"partnerId": "C1001", "uphone": "13800000001", "email": "a@acme.cn", "corpId": "ww", "tel": "138"}
    if surface is Surface.CALL:
        fields["ivrPath"] = '[{"navKey":"1","navName":"售前[咨询]"}]'
    signed = sign_fields(surface, {k: v for k, v in fields.items() if k in MODELS[surface].FIELD_NAMES}, POLICY, NOW)
    blob = zc_encode_blob(signed)
    assert "[" not in blob and "=" not in blob and "&" not in blob
    context = parse_query_string(surface, blob)
    verify_sign(surface, context.fields, POLICY, NOW)
    if surface is Surface.CALL:
        assert isinstance(context, CallContext)
        assert context.ivrPath[0].navName == "售前[咨询]"


def test_zc_encode_flag_outside_the_blob() -> None:
    blob = quote('callId=A1&ivrPath=[{"navKey":"9","navName":"投诉"}]', safe="")
    context = parse_query_string(Surface.CALL, f"zc_encode=1&{blob}")
    assert isinstance(context, CallContext)
    assert context.callId == "A1" and context.ivrPath[0].navName == "投诉"


def test_wecom_fields_and_seconds_timestamp() -> None:
    context = parse_query_string(Surface.WECOM, "corpId=ww&userId=li&wxUnionId=ou1&tel=139&timeStamp=1764000000")
    assert isinstance(context, WecomContext)
    assert context.agent == "li" and context.union_id == "ou1" and context.phone == "139"
    assert context.signed_at_ms == 1_764_000_000_000


@pytest.mark.parametrize(
    ("surface", "query", "code", "field"),
    [
        (Surface.WORKBENCH, "params=%7Bnot%20json", "bad_params_json", "params"),
        (Surface.WORKBENCH, "params=%5B1%2C2%5D", "bad_params_json", "params"),
        (Surface.CALL, "ivrPath=%5B%7B", "bad_ivr_json", "ivrPath"),
        (Surface.CALL, "ivrPath=%7B%7D", "bad_ivr_json", "ivrPath"),
        (Surface.CALL, "ivrPath=%5B1%5D", "bad_ivr_json", "ivrPath"),
        (Surface.WORKBENCH, "timestamp=yesterday", "bad_timestamp", "timestamp"),
        (Surface.WORKBENCH, "timestamp=-5", "bad_timestamp", "timestamp"),
        (Surface.WORKBENCH, "timestamp=1.5e12", "bad_timestamp", "timestamp"),
        (Surface.WORKBENCH, "createChatTime=%EF%BC%91", "bad_timestamp", "createChatTime"),
        (Surface.WECOM, "timeStamp=12ab", "bad_timestamp", "timeStamp"),
        (Surface.CUSTOMER, "partnerId=a&partnerid=b", "duplicate_field", "partnerId"),
        (Surface.CUSTOMER, "email=%FF%FE", "bad_encoding", "email"),
        (Surface.CUSTOMER, "email=" + "x" * 5000, "value_too_long", "email"),
    ],
    ids=["params-broken", "params-not-object", "ivr-broken", "ivr-not-list", "ivr-not-objects", "ts-word",
         "ts-negative", "ts-float", "ts-fullwidth-digit", "wecom-ts", "duplicate", "bad-utf8", "too-long"],
)  # fmt: skip
def test_malformed_queries_name_the_field(surface: Surface, query: str, code: str, field: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_query_string(surface, query)
    assert caught.value.code == code
    assert caught.value.field == field
    assert caught.value.status == 400


def test_same_value_twice_is_fine_and_unknown_names_are_ignored() -> None:
    context = parse_query_string(Surface.CUSTOMER, "partnerId=a&partnerid=a&utm_source=x&lang=en")
    assert context.partner_id == "a" and "utm_source" not in context.fields


def test_unknown_surface_and_view_are_404() -> None:
    with pytest.raises(NotFound) as surface:
        parse_surface("crm")
    with pytest.raises(NotFound) as view:
        parse_view("settings")
    assert (surface.value.code, surface.value.status, view.value.code) == ("unknown_surface", 404, "unknown_view")
    assert parse_surface("call-task") is Surface.CALL_TASK and parse_view("new-ticket") is View.NEW_TICKET


def test_parse_fields_accepts_a_selected_message_query() -> None:
    """SPEC §4: `selected` carries the URL fields as an object; values may be numbers."""
    context = parse_fields(Surface.WORKBENCH, {"partnerid": "C2", "timestamp": 1764000000000})  # type: ignore[dict-item]
    assert context.partner_id == "C2" and context.fields["timestamp"] == "1764000000000"


@settings(max_examples=400, deadline=None)
@given(surface=st.sampled_from(list(Surface)), raw=st.text(max_size=300))
def test_fuzz_any_query_gives_a_model_or_a_clear_400(surface: Surface, raw: str) -> None:
    try:
        context = parse_query_string(surface, raw)
    except PanelError as error:
        assert error.status == 400
    else:
        assert isinstance(context, MODELS[surface])


_names = st.sampled_from(
    ["partnerId", "timestamp", "params", "ivrPath", "email", "uphone", "timeStamp", "x", "zc_encode"]
)


@settings(max_examples=300, deadline=None)
@given(surface=st.sampled_from(list(Surface)), pairs=st.lists(st.tuples(_names, st.text(max_size=40)), max_size=8),
       blob=st.booleans())  # fmt: skip
def test_fuzz_structured_queries(surface: Surface, pairs: list[tuple[str, str]], blob: bool) -> None:
    fields = dict(pairs)
    raw = zc_encode_blob(fields) if blob else build_query_string(fields)
    try:
        parse_query_string(surface, raw)
    except PanelError as error:
        assert error.status == 400
