"""SPEC §3 sign formulas and verification, as tables over every surface and both modes."""

from __future__ import annotations

import hashlib

import pytest
from sobot_panel.errors import SignError
from sobot_panel.protocol.signing import SignMode, SignPolicy, expected_sign, sign_fields, verify_sign
from sobot_panel.protocol.surfaces import Surface, build_query_string, parse_query_string

SYSNUM = "acme123"
SECRET = "s3cr3t-key"
NOW = 1_764_000_000_000
SECRET_POLICY = SignPolicy(sys_num=SYSNUM, secret=SECRET, wecom_secret=None, max_age_s=300)
LEGACY_POLICY = SignPolicy(sys_num=SYSNUM, secret=None, wecom_secret=None, max_age_s=300)
WECOM_SECRET_POLICY = SignPolicy(sys_num=SYSNUM, secret=SECRET, wecom_secret="wx-secret", max_age_s=300)
SOBOT_SURFACES = [s for s in Surface if s is not Surface.WECOM]
PHONE_SURFACES = [s for s in SOBOT_SURFACES if s is not Surface.WORKBENCH]


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


FULL: dict[Surface, dict[str, str]] = {
    Surface.WORKBENCH: {"partnerId": "C1001", "email": "a@acme.cn", "uid": "u1", "cid": "c1", "groupId": "g",
                        "groupName": "售前", "createChatTime": "1763999990000", "params": '{"k":"v"}'},
    Surface.CALL: {"partnerId": "C1001", "callId": "CALL-1", "email": "a@acme.cn", "uid": "u1",
                   "uphone": "13800000001", "uemail": "c@x.cn", "ivrPath": '[{"navKey":"1","navName":"售前"}]',
                   "province": "浙江", "city": "杭州"},
    Surface.CALL_TASK: {"email": "a@acme.cn", "uid": "u1", "uphone": "13800000001", "uemail": "c@x.cn"},
    Surface.TICKET: {"email": "a@acme.cn", "uid": "u1", "uphone": "13800000001", "uemail": "c@x.cn",
                     "ticketId": "T1"},
    Surface.CUSTOMER: {"partnerId": "C1001", "email": "a@acme.cn", "uid": "u1", "uphone": "13800000001",
                       "uemail": "c@x.cn"},
    Surface.QA: {"partnerId": "C1001", "email": "a@acme.cn", "uid": "u1", "cid": "c1", "uphone": "13800000001",
                 "uemail": "c@x.cn"},
    Surface.MONITOR: {"partnerId": "C1001", "email": "a@acme.cn", "uid": "u1", "cid": "c1",
                      "uphone": "13800000001", "uemail": "c@x.cn"},
    Surface.WECOM: {"corpId": "ww1", "userId": "zhang", "partnerId": "wm1", "serviceId": "s1", "serviceRoleId": "r1",
                    "wxUnionId": "ou1", "wxBuildUnionId": "ob1", "tel": "13800000001", "serviceTel": "0571-1",
                    "companyId": "co"},
}  # fmt: skip

# Which fields each surface's sign covers, per mode (SPEC §3.2 and §3.3).
SIGNED_SECRET = {s: (["timestamp", "partnerId"] if s is Surface.WORKBENCH else ["timestamp", "uphone", "uemail"])
                 for s in SOBOT_SURFACES}  # fmt: skip
SIGNED_WECOM = ["corpId", "userId", "partnerId", "serviceId", "serviceRoleId", "wxUnionId", "wxBuildUnionId", "tel",
                "serviceTel", "timeStamp"]  # fmt: skip


def verify(surface: Surface, fields: dict[str, str], policy: SignPolicy, now: int = NOW) -> SignMode:
    context = parse_query_string(surface, build_query_string(fields))
    return verify_sign(surface, context.fields, policy, now)


# --- the formulas, written out by hand ---------------------------------------------------------


@pytest.mark.parametrize(
    ("surface", "fields", "policy", "formula"),
    [
        (Surface.WORKBENCH, {"timestamp": "1", "partnerId": "P"}, SECRET_POLICY, SYSNUM + SECRET + "1P"),
        (Surface.WORKBENCH, {"timestamp": "1", "partnerId": ""}, SECRET_POLICY, SYSNUM + SECRET + "1"),
        (
            Surface.CALL,
            {"timestamp": "1", "uphone": "138", "uemail": "e@x"},
            SECRET_POLICY,
            SYSNUM + SECRET + "1138e@x",
        ),
        (Surface.CALL, {"timestamp": "1", "uphone": "", "uemail": "e@x"}, SECRET_POLICY, SYSNUM + SECRET + "1e@x"),
        (Surface.TICKET, {"timestamp": "1", "uphone": "138"}, SECRET_POLICY, SYSNUM + SECRET + "1138"),
        (Surface.QA, {"timestamp": "1"}, SECRET_POLICY, SYSNUM + SECRET + "1"),
        (Surface.CUSTOMER, {"email": "a@acme.cn"}, LEGACY_POLICY, SYSNUM + "a@acme.cn"),
        (Surface.WORKBENCH, {"email": "a+b@acme.cn", "partnerId": "P"}, LEGACY_POLICY, SYSNUM + "a+b@acme.cn"),
        (Surface.WECOM, {"corpId": "c", "userId": "u", "tel": "t", "timeStamp": "9"}, LEGACY_POLICY, "cut9"),
        (Surface.WECOM, {"corpId": "c", "timeStamp": "9"}, WECOM_SECRET_POLICY, "c9wx-secret"),
    ],
    ids=[
        "wb",
        "wb-no-partner",
        "call",
        "call-no-phone",
        "ticket-no-email",
        "qa-none",
        "legacy",
        "legacy-plus",
        "wecom",
        "wecom-secret",
    ],
)
def test_formulas(surface: Surface, fields: dict[str, str], policy: SignPolicy, formula: str) -> None:
    assert expected_sign(surface, fields, policy) == md5(formula)


# --- valid signs, every surface and mode --------------------------------------------------------


@pytest.mark.parametrize("surface", list(Surface), ids=str)
@pytest.mark.parametrize("policy", [SECRET_POLICY, LEGACY_POLICY], ids=["secret", "legacy"])
def test_valid_sign_verifies(surface: Surface, policy: SignPolicy) -> None:
    fields = sign_fields(surface, FULL[surface], policy, NOW)
    mode = verify(surface, fields, policy)
    if surface is Surface.WECOM:
        assert mode is SignMode.WECOM
    else:
        assert mode is (SignMode.SECRET if policy.secret else SignMode.LEGACY)


@pytest.mark.parametrize("surface", list(Surface), ids=str)
def test_upper_case_hex_is_accepted(surface: Surface) -> None:
    fields = sign_fields(surface, FULL[surface], SECRET_POLICY, NOW)
    fields["sign"] = fields["sign"].upper()
    verify(surface, fields, SECRET_POLICY)


@pytest.mark.parametrize(
    ("surface", "field"),
    [(s, f) for s in SOBOT_SURFACES for f in SIGNED_SECRET[s]] + [(Surface.WECOM, f) for f in SIGNED_WECOM],
    ids=lambda v: str(v),
)
def test_each_signed_field_tampered_is_refused(surface: Surface, field: str) -> None:
    fields = sign_fields(surface, FULL[surface], SECRET_POLICY, NOW)
    fields[field] = str(NOW - 1000) if field.lower() == "timestamp" else fields.get(field, "") + "9"
    with pytest.raises(SignError) as caught:
        verify(surface, fields, SECRET_POLICY)
    assert caught.value.code == "sign_mismatch"
    assert caught.value.status == 403


@pytest.mark.parametrize("surface", SOBOT_SURFACES, ids=str)
def test_legacy_email_tampered_is_refused(surface: Surface) -> None:
    fields = sign_fields(surface, FULL[surface], LEGACY_POLICY, NOW)
    fields["email"] = "other@acme.cn"
    with pytest.raises(SignError, match="sign_mismatch"):
        verify(surface, fields, LEGACY_POLICY)


@pytest.mark.parametrize("surface", SOBOT_SURFACES, ids=str)
def test_unsigned_fields_may_change_in_secret_mode(surface: Surface) -> None:
    """SPEC §3.2 signs only these fields; the others (email, uid, ...) are not covered by Sobot's sign."""
    fields = sign_fields(surface, FULL[surface], SECRET_POLICY, NOW)
    fields["uid"] = "someone-else"
    verify(surface, fields, SECRET_POLICY)


@pytest.mark.parametrize(
    ("surface", "emptied"),
    [(Surface.WORKBENCH, ["partnerId"])]
    + [(s, ["uphone"]) for s in PHONE_SURFACES]
    + [(s, ["uemail"]) for s in PHONE_SURFACES]
    + [(s, ["uphone", "uemail"]) for s in PHONE_SURFACES]
    + [(Surface.WECOM, ["wxUnionId", "wxBuildUnionId", "tel"])],
    ids=lambda v: str(v),
)
@pytest.mark.parametrize("absent", [True, False], ids=["absent", "empty"])
def test_empty_fields_are_left_out_of_the_sign(surface: Surface, emptied: list[str], absent: bool) -> None:
    base = {k: v for k, v in FULL[surface].items() if k not in emptied}
    if not absent:
        base.update({name: "" for name in emptied})
    fields = sign_fields(surface, base, SECRET_POLICY, NOW)
    # Sobot's sign left the empty field out: recompute it by hand from the non-empty parts only.
    if surface is Surface.WORKBENCH:
        assert fields["sign"] == md5(SYSNUM + SECRET + str(NOW))
    elif surface is not Surface.WECOM:
        rest = "".join(base.get(k, "") for k in ("uphone", "uemail"))
        assert fields["sign"] == md5(SYSNUM + SECRET + str(NOW) + rest)
    verify(surface, fields, SECRET_POLICY)


@pytest.mark.parametrize("surface", list(Surface), ids=str)
@pytest.mark.parametrize(
    ("offset_ms", "code", "minutes"),
    [
        (-17 * 60_000 - 5_000, "sign_expired", 17),
        (-301_000, "sign_expired", 5),
        (+301_000, "sign_future", 5),
        (+2 * 3600_000, "sign_future", 120),
    ],
    ids=["17-min-old", "just-expired", "just-future", "2h-future"],
)
def test_timestamps_outside_the_window(surface: Surface, offset_ms: int, code: str, minutes: int) -> None:
    fields = sign_fields(surface, FULL[surface], SECRET_POLICY, NOW + offset_ms)
    with pytest.raises(SignError) as caught:
        verify(surface, fields, SECRET_POLICY)
    assert caught.value.code == code
    assert caught.value.params["minutes"] == minutes


@pytest.mark.parametrize("surface", list(Surface), ids=str)
@pytest.mark.parametrize("offset_ms", [-299_000, 0, 299_000], ids=["old-ok", "now", "ahead-ok"])
def test_timestamps_inside_the_window(surface: Surface, offset_ms: int) -> None:
    fields = sign_fields(surface, FULL[surface], SECRET_POLICY, NOW + offset_ms)
    verify(surface, fields, SECRET_POLICY)


def test_legacy_has_no_window() -> None:
    fields = sign_fields(Surface.WORKBENCH, FULL[Surface.WORKBENCH], LEGACY_POLICY, NOW - 86_400_000)
    assert verify(Surface.WORKBENCH, fields, LEGACY_POLICY) is SignMode.LEGACY


def test_legacy_sign_is_refused_once_a_secret_is_configured() -> None:
    fields = {"partnerId": "C1", "email": "a@acme.cn", "timestamp": str(NOW), "sign": md5(SYSNUM + "a@acme.cn")}
    with pytest.raises(SignError, match="sign_mismatch"):
        verify(Surface.WORKBENCH, fields, SECRET_POLICY)


def test_wecom_seconds_timestamp_is_read_as_seconds() -> None:
    fields = {**FULL[Surface.WECOM], "timeStamp": str(NOW // 1000)}
    fields["sign"] = expected_sign(Surface.WECOM, fields, SECRET_POLICY)
    verify(Surface.WECOM, fields, SECRET_POLICY)


def test_wecom_secret_must_be_included_when_configured() -> None:
    fields = sign_fields(Surface.WECOM, FULL[Surface.WECOM], SECRET_POLICY, NOW)  # signed without the secret
    with pytest.raises(SignError, match="sign_mismatch"):
        verify(Surface.WECOM, fields, WECOM_SECRET_POLICY)
    verify(Surface.WECOM, sign_fields(Surface.WECOM, FULL[Surface.WECOM], WECOM_SECRET_POLICY, NOW),
           WECOM_SECRET_POLICY)  # fmt: skip


@pytest.mark.parametrize(
    ("surface", "drop", "code"),
    [
        (Surface.WORKBENCH, "sign", "sign_missing"),
        (Surface.WORKBENCH, "timestamp", "timestamp_missing"),
        (Surface.CALL, "timestamp", "timestamp_missing"),
        (Surface.WECOM, "timeStamp", "timestamp_missing"),
    ],
    ids=["no-sign", "wb-no-ts", "call-no-ts", "wecom-no-ts"],
)
def test_missing_sign_or_timestamp(surface: Surface, drop: str, code: str) -> None:
    fields = sign_fields(surface, FULL[surface], SECRET_POLICY, NOW)
    del fields[drop]
    with pytest.raises(SignError) as caught:
        verify(surface, fields, SECRET_POLICY)
    assert caught.value.code == code


def test_lower_case_partnerid_is_signed_like_partnerId() -> None:
    fields = sign_fields(Surface.WORKBENCH, {"partnerId": "C1001", "email": "a@acme.cn"}, SECRET_POLICY, NOW)
    query = build_query_string(fields).replace("partnerId=", "partnerid=")
    context = parse_query_string(Surface.WORKBENCH, query)
    assert context.partner_id == "C1001"
    verify_sign(Surface.WORKBENCH, context.fields, SECRET_POLICY, NOW)
