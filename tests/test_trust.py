"""The trust model (ARCHITECTURE, "The trust model"): only what Sobot signs chooses the customer a panel shows.

Tried as an attacker with a valid signed URL in hand: swapping the unsigned `partnerId` or `uid`, or using a
sign that covers no customer key, must never show anyone else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sobot_panel.app import create_app
from sobot_panel.protocol.signing import SignMode, SignPolicy, sign_fields
from sobot_panel.protocol.surfaces import Surface, build_query_string, parse_fields
from sobot_panel.protocol.trust import disagreements, matches, select_customer
from sobot_panel.settings import Settings

from .conftest import SECRET, SYSNUM
from .helpers.live import boot_of, connect_panel, next_frame

ClientFactory = Callable[..., Awaitable[TestClient[Any, web.Application]]]
POLICY = SignPolicy(sys_num=SYSNUM, secret=SECRET, wecom_secret=None, max_age_s=300)
LEGACY = SignPolicy(sys_num=SYSNUM, secret=None, wecom_secret=None, max_age_s=300)
AGENT = "agent@acme.cn"
# The sample customers: C1001 张伟 (13800000001, zhang.wei@example.cn, uid u-1), C1002 李娜 (…02, u-2).
ZHANG, LI = "张伟", "李娜"
PHONE_SURFACES = [Surface.CALL, Surface.CALL_TASK, Surface.TICKET, Surface.CUSTOMER, Surface.QA, Surface.MONITOR]
FIELDS = {"partnerId": "partner_id", "phone": "phone", "email": "email", "uid": "uid", "unionId": "union_id"}


def now_ms() -> int:
    import time

    return time.time_ns() // 1_000_000


def url(surface: Surface, fields: dict[str, str], policy: SignPolicy = POLICY, **after_signing: str) -> str:
    signed = sign_fields(surface, {"email": AGENT, **fields}, policy, now_ms())
    signed.update(after_signing)  # what an attacker changes in a URL they were given
    return f"/embed/{surface.value}?{build_query_string(signed)}"


@pytest.fixture
async def client(aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(make_settings()))


async def page(client: TestClient[Any, Any], path: str) -> str:
    response = await client.get(path)
    body = await response.text()
    assert response.status == 200, body
    return body


# --- the rules, as a table ------------------------------------------------------------------------


def _select(surface: Surface, fields: dict[str, str], mode: SignMode, trusted: frozenset[str] = frozenset()) -> Any:
    return select_customer(surface, parse_fields(surface, fields), mode, trusted)


@pytest.mark.parametrize(
    ("surface", "fields", "mode", "signed", "narrowing"),
    [
        (Surface.WORKBENCH, {"partnerId": "C1", "uid": "u9"}, SignMode.SECRET, [("partnerId", "C1")], [("uid", "u9")]),
        (Surface.WORKBENCH, {"partnerId": "", "uid": "u9"}, SignMode.SECRET, [], [("uid", "u9")]),
        (Surface.CALL, {"partnerId": "C9", "uphone": "138", "uid": "u9"}, SignMode.SECRET, [("phone", "138")],
         [("partnerId", "C9"), ("uid", "u9")]),
        (Surface.CUSTOMER, {"partnerId": "C9", "uemail": "a@b.cn"}, SignMode.SECRET, [("email", "a@b.cn")],
         [("partnerId", "C9")]),
        (Surface.QA, {"partnerId": "C9", "cid": "c"}, SignMode.SECRET, [], [("partnerId", "C9")]),
        (Surface.WECOM, {"partnerId": "wm1", "tel": "138", "wxUnionId": "ou"}, SignMode.WECOM_SECRET,
         [("partnerId", "wm1"), ("phone", "138"), ("unionId", "ou")], []),
    ],
    ids=["workbench", "workbench-anonymous", "call", "customer-email", "qa-no-phone", "wecom-secret"],
)  # fmt: skip
def test_only_signed_keys_select_in_secret_mode(
    surface: Surface, fields: dict[str, str], mode: SignMode, signed: list[Any], narrowing: list[Any]
) -> None:
    selection = _select(surface, fields, mode)
    assert list(selection.signed) == signed and list(selection.keys) == signed
    assert list(selection.narrowing) == narrowing
    assert selection.secret


@pytest.mark.parametrize("mode", [SignMode.LEGACY, SignMode.WECOM], ids=str)
def test_without_a_secret_every_key_selects_but_none_is_signed(mode: SignMode) -> None:
    surface = Surface.WECOM if mode is SignMode.WECOM else Surface.CALL
    fields = {"partnerId": "C1", "tel": "138"} if mode is SignMode.WECOM else {"partnerId": "C1", "uphone": "138"}
    selection = _select(surface, fields, mode)
    assert selection.signed == () and not selection.secret
    assert list(selection.keys) == [("partnerId", "C1"), ("phone", "138")]


def test_an_operator_may_trust_named_unsigned_keys() -> None:
    selection = _select(Surface.QA, {"partnerId": "C9", "uid": "u9"}, SignMode.SECRET, frozenset({"partnerId"}))
    assert selection.signed == () and selection.trusted == (("partnerId", "C9"),)
    assert selection.narrowing == (("uid", "u9"),)


def test_matching_and_disagreeing() -> None:
    customer = {"partnerId": "C1", "phone": "138", "email": "Zhang@Example.cn", "uid": "u-1", "unionId": ""}
    assert matches((("email", "zhang@example.cn"),), customer)
    assert not matches((("phone", "139"),), customer)
    selection = _select(Surface.CALL, {"partnerId": "C2", "uphone": "138", "uid": "u-1"}, SignMode.SECRET)
    assert disagreements(selection, customer) == ["partnerId"]


# --- through the service --------------------------------------------------------------------------


@pytest.mark.parametrize("surface", PHONE_SURFACES, ids=lambda s: s.value)
@pytest.mark.parametrize("swap", ["partnerId", "uid"])
async def test_a_swapped_unsigned_key_shows_nobody_else(
    client: TestClient[Any, Any], surface: Surface, swap: str
) -> None:
    """A valid sign over 张伟's phone, with 李娜's partnerId or uid put in: still 张伟, never 李娜."""
    forged = {"partnerId": "C1002"} if swap == "partnerId" else {"uid": "u-2"}
    body = await page(client, url(surface, {"uphone": "13800000001", "partnerId": "C1001", "uid": "u-1"}, **forged))
    assert ZHANG in body and LI not in body
    assert 'data-testid="unverified"' not in body


async def test_a_swapped_uid_on_the_workbench_shows_nobody_else(client: TestClient[Any, Any]) -> None:
    body = await page(client, url(Surface.WORKBENCH, {"partnerId": "C1001", "uid": "u-1"}, uid="u-2"))
    assert ZHANG in body and LI not in body


@pytest.mark.parametrize(
    ("surface", "fields"),
    [(Surface.WORKBENCH, {"partnerId": "", "uid": "u-2"}), (Surface.CUSTOMER, {"partnerId": "C1002", "uid": "u-2"}),
     (Surface.QA, {"partnerId": "C1002", "cid": "c-1"}), (Surface.MONITOR, {"partnerId": "C1002"}),
     (Surface.CALL, {"partnerId": "C1002", "callId": "x"}), (Surface.TICKET, {"uid": "u-2", "ticketId": "T1"})],
    ids=["workbench", "customer", "qa", "monitor", "call", "ticket"],
)  # fmt: skip
async def test_a_sign_without_a_customer_key_opens_no_customer(
    client: TestClient[Any, Any], surface: Surface, fields: dict[str, str]
) -> None:
    """`MD5(sysNum + secret + timestamp)`: any recent sign of this shape must not open 李娜 by unsigned keys."""
    body = await page(client, url(surface, fields))
    assert 'data-testid="no-verified-customer"' in body
    assert LI not in body
    assert "u-2" in body or "C1002" in body  # what was received is shown, as received


async def test_a_relayed_selection_follows_the_same_rule(client: TestClient[Any, Any]) -> None:
    first = await page(client, url(Surface.WORKBENCH, {"partnerId": "C1001", "uid": "u-1", "cid": "c-1"}))
    ws = await connect_panel(client, boot_of(first)["token"])
    try:
        anonymous = sign_fields(Surface.WORKBENCH, {"partnerId": "", "email": AGENT, "cid": "c-2"}, POLICY, now_ms())
        await ws.send_json({"type": "selected", "id": 7, "query": anonymous, "uid": "u-2", "partnerId": "C1002"})
        frame = await next_frame(ws, "panel")
        assert frame["id"] == 7 and frame["partnerId"] == ""
        assert 'data-testid="no-verified-customer"' in frame["html"] and LI not in frame["html"]
    finally:
        await ws.close()


async def test_legacy_mode_marks_the_customer_unverified(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> None:
    client = await aiohttp_client(create_app(make_settings(secret=None)))
    body = await page(client, url(Surface.CUSTOMER, {"partnerId": "C1002"}, policy=LEGACY))
    assert LI in body and 'data-testid="unverified"' in body


async def test_trusted_unsigned_keys_select_and_are_marked_unverified(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> None:
    client = await aiohttp_client(create_app(make_settings(trust_unsigned="partnerId")))
    body = await page(client, url(Surface.QA, {"partnerId": "C1002"}))
    assert LI in body and 'data-testid="unverified"' in body
    signed = await page(client, url(Surface.QA, {"partnerId": "C1002", "uphone": "13800000001"}))
    assert ZHANG in signed and LI not in signed and 'data-testid="unverified"' not in signed  # the signed key wins


def test_only_partner_id_and_uid_can_be_trusted(make_settings: Callable[..., Settings]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="only partnerId and uid"):
        make_settings(trust_unsigned="uphone")


async def test_a_disagreeing_unsigned_key_is_counted(client: TestClient[Any, Any]) -> None:
    await page(client, url(Surface.CALL, {"uphone": "13800000001", "partnerId": "C1002"}))
    metrics = await (await client.get("/metrics")).text()
    assert 'panel_unsigned_disagreements_total{field="partnerId",surface="call",tenant=""} 1.0' in metrics


async def test_a_send_from_a_panel_without_a_verified_customer_names_no_customer(client: TestClient[Any, Any]) -> None:
    body = await page(client, url(Surface.TICKET, {"partnerId": "C1002", "uid": "u-2", "ticketId": "T1"}))
    data = {"card_title": "退款", "card_url": "https://shop.example.cn/o/1"}
    response = await client.post("/panel/send", json={"token": boot_of(body)["token"], "kind": "ticket",
                                                       "id": "evt-untrusted-1", "data": data})  # fmt: skip
    assert response.status == 200
    from sobot_panel.appkeys import KEYS, REDIS

    app = client.server.app
    assert app is not None
    entries = await app[REDIS].xrange(app[KEYS].audit_stream)
    assert entries and entries[-1][1]["partner_id"] == ""  # never the unsigned C1002


# --- rotating keys, and the session's absolute end ---------------------------------------------------


async def test_sobots_previous_key_is_accepted_and_counted_during_a_rotation(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> None:
    client = await aiohttp_client(create_app(make_settings(secret="new-key", secret_previous=SECRET)))
    old_sign = url(Surface.WORKBENCH, {"partnerId": "C1001"})  # POLICY signs with SECRET, now the previous key
    assert ZHANG in await page(client, old_sign)
    new_policy = SignPolicy(sys_num=SYSNUM, secret="new-key", wecom_secret=None)
    assert ZHANG in await page(client, url(Surface.WORKBENCH, {"partnerId": "C1001"}, policy=new_policy))
    metrics = await (await client.get("/metrics")).text()
    assert 'panel_sign_previous_secret_total{tenant=""} 1.0' in metrics
    other = SignPolicy(sys_num=SYSNUM, secret="some-other-key", wecom_secret=None)
    assert (await client.get(url(Surface.WORKBENCH, {"partnerId": "C1001"}, policy=other))).status == 403


async def test_a_rotated_session_key_keeps_open_panels(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> None:
    before = await aiohttp_client(create_app(make_settings(session_key="key-one")))
    token = boot_of(await page(before, url(Surface.TICKET, {"uphone": "13800000001"})))["token"]
    after = await aiohttp_client(create_app(make_settings(session_key="key-two", session_key_previous="key-one")))
    data = {"card_title": "退款", "card_url": "https://shop.example.cn/o/1"}
    send = {"token": token, "kind": "ticket", "id": "evt-rotation-1", "data": data}
    assert (await after.post("/panel/send", json=send)).status == 200
    unrelated = await aiohttp_client(create_app(make_settings(session_key="key-two")))
    assert (await unrelated.post("/panel/send", json={**send, "id": "evt-rotation-2"})).status == 401


async def test_renewal_never_passes_the_sessions_absolute_end(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> None:
    from sobot_panel.appkeys import COMPANIES

    client = await aiohttp_client(create_app(make_settings(session_ttl=60, session_max_age=90)))
    token = boot_of(await page(client, url(Surface.WORKBENCH, {"partnerId": "C1001"})))["token"]
    app = client.server.app
    assert app is not None
    core = app[COMPANIES].default.core
    claims = core.session(token)
    assert claims.expires_ms - claims.born_ms == 60_000
    now = claims.born_ms
    # 50 s into the session, 10 s left on the token: renewed, but only to born + 90 s, not now + 60 s
    middle = dataclasses.replace(claims, born_ms=now - 50_000, expires_ms=now + 10_000)
    renewed = core.renewed(middle)
    assert renewed is not None and abs(renewed[0].expires_ms - (middle.born_ms + 90_000)) < 1_000
    assert core.session(renewed[1]).session_id == claims.session_id
    # past the absolute end: no renewal, whatever the token still has left
    assert core.renewed(dataclasses.replace(claims, born_ms=now - 95_000, expires_ms=now + 5_000)) is None
