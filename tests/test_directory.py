"""The directory: models, the sample data, the HTTP client against the fake enterprise, plugins."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sobot_panel.assets import sample_file
from sobot_panel.directory import plugins
from sobot_panel.directory.http import HttpDirectory
from sobot_panel.directory.models import Customer, Directory, LookupKeys, Order, UpstreamError
from sobot_panel.directory.sample import SampleDirectory, load_customers
from sobot_panel.settings import Settings

from .helpers import fake_enterprise as enterprise
from .helpers.fake_enterprise import TOKEN, FakeEnterprise

fake_enterprise = enterprise.fake_enterprise  # the fixture

WEB = Path(__file__).resolve().parents[1] / "web"


# --- models ----------------------------------------------------------------------------------


def test_lookup_keys_order_and_emptiness() -> None:
    keys = LookupKeys(partner_id="C1", phone=" 138 ", email="", uid="u-1", union_id="ou_1")
    assert keys.ordered() == [("partnerId", "C1"), ("phone", "138"), ("uid", "u-1"), ("unionId", "ou_1")]
    assert not keys.is_empty
    assert LookupKeys().is_empty
    assert LookupKeys(phone="  ").is_empty


def test_customer_ignores_unknown_fields_and_coerces_attributes() -> None:
    customer = Customer.model_validate(
        {"partnerId": "C9", "name": "测试", "vip": True, "attributes": {"积分": 12, "活跃": True, "备注": None}}
    )
    assert customer.attributes == {"积分": "12", "活跃": "true", "备注": ""}
    assert customer.orders == [] and customer.channel == ""
    with pytest.raises(ValidationError):
        customer.name = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    "change",
    [{"status": 8}, {"status": -1}, {"totalFee": -1}, {"createTime": "yesterday"}],
    ids=["status-8", "status-negative", "fee-negative", "time-not-ms"],
)
def test_order_rejects_out_of_contract_values(change: dict[str, Any]) -> None:
    order = {"orderCode": "SO1", "status": 1, "createTime": 1_700_000_000_000, "totalFee": 100} | change
    with pytest.raises(ValidationError):
        Order.model_validate(order)


def test_upstream_error_has_a_reason() -> None:
    assert UpstreamError("timeout").reason == "timeout"


# --- the sample data -------------------------------------------------------------------------

C1001_KEYS = [
    ("partnerId", "C1001"),
    ("phone", "13800000001"),
    ("email", "Zhang.Wei@EXAMPLE.cn"),
    ("uid", "u-1"),
]


@pytest.mark.parametrize(("key", "value"), C1001_KEYS, ids=[k for k, _ in C1001_KEYS])
async def test_sample_finds_by_each_key(key: str, value: str) -> None:
    customer = await SampleDirectory().lookup(key, value)
    assert customer is not None and customer.partnerId == "C1001" and customer.name == "张伟"


async def test_sample_finds_by_union_id_and_misses_cleanly() -> None:
    directory = SampleDirectory()
    c1002 = directory.customers[1]
    assert (await directory.lookup("unionId", c1002.unionId)) == c1002
    assert await directory.lookup("phone", "13900000000") is None
    assert await directory.lookup("partnerId", "c1001") is None  # only email is case-insensitive
    with pytest.raises(ValueError, match="partnerId"):
        await directory.lookup("nickname", "x")
    await directory.close()


def test_sample_data_covers_what_the_panel_shows() -> None:
    customers = load_customers()
    assert [c.partnerId for c in customers] == [f"C{1000 + n}" for n in range(1, 13)]
    assert [c.uid for c in customers] == [f"u-{n}" for n in range(1, 13)]
    assert customers[0].phone == "13800000001" and customers[0].email == "zhang.wei@example.cn"
    assert {o.status for c in customers for o in c.orders} == set(range(8))
    assert len({c.unionId for c in customers}) == 12 and all(c.unionId.startswith("ou_") for c in customers)
    assert {c.level for c in customers} == {"普通会员", "银卡会员", "金卡会员", "钻石会员"}

    c1001 = customers[0]
    assert len(c1001.orders) >= 3
    assert any(o.status == 0 and o.statusText == "部分退款" for o in c1001.orders)
    assert any(o.status == 3 for o in c1001.orders)

    for customer in customers:
        assert 3 <= len(customer.products) <= 4
        for order in customer.orders:
            if customer.channel == "miniprogram":  # SPEC §5.2: a mini-program page path, not a web link
                assert customer.partnerId == "C1003"
                assert order.url.startswith("pages/order/detail?code=")
            else:
                assert order.url == f"https://shop.example.cn/orders/{order.orderCode}"
            assert order.totalFee > 0 and order.goods
        for product in customer.products:
            assert product.url.startswith("https://shop.example.cn/p/")
            assert re.fullmatch(r"¥\d+\.\d\d|\d+元", product.label)
    assert customers[2].channel == "miniprogram"
    assert {c.channel for c in customers[3:] + customers[:2]} <= {"web", "app", "wechat"}
    assert any(c.tickets for c in customers) and any(not c.tickets for c in customers)


def test_every_sample_image_exists_and_is_small() -> None:
    customers = load_customers()
    pictures = {g.pictureUrl for c in customers for o in c.orders for g in o.goods}
    pictures |= {p.thumbnail for c in customers for p in c.products}
    assert pictures and all(p.startswith("/static/img/") for p in pictures)
    for picture in pictures:
        path = WEB / picture.lstrip("/")
        assert path.is_file(), picture
        text = path.read_text(encoding="utf-8")
        assert len(text.encode()) < 1536 and 'viewBox="0 0 96 96"' in text, picture


def test_sample_file_is_where_the_package_looks() -> None:
    assert sample_file("customers.json") == WEB / "sample" / "customers.json"
    assert isinstance(json.loads(sample_file("customers.json").read_text(encoding="utf-8"))["customers"], list)


# --- the HTTP directory against the fake enterprise ------------------------------------------


def http_directory(fake: FakeEnterprise, **overrides: Any) -> tuple[HttpDirectory, list[tuple[float, str]]]:
    outcomes: list[tuple[float, str]] = []
    options: dict[str, Any] = {"token": TOKEN, "timeout_s": 2.0, "on_call": lambda s, o: outcomes.append((s, o))}
    options.update(overrides)
    return HttpDirectory(fake.url, **options), outcomes


async def test_http_finds_a_customer_with_the_bearer_token(fake_enterprise: FakeEnterprise) -> None:
    directory, outcomes = http_directory(fake_enterprise)
    try:
        customer = await directory.lookup("email", "li.na@example.cn")
        assert customer is not None and customer.partnerId == "C1002" and customer.orders
        assert await directory.lookup("phone", "13800000003") is not None
    finally:
        await directory.close()
    assert fake_enterprise.authorizations == [f"Bearer {TOKEN}"] * 2
    assert fake_enterprise.calls == {"email:li.na@example.cn": 1, "phone:13800000003": 1}
    assert [o for _, o in outcomes] == ["ok", "ok"]


async def test_http_reuses_one_session(fake_enterprise: FakeEnterprise) -> None:
    directory, _ = http_directory(fake_enterprise)
    await directory.lookup("partnerId", "C1001")
    session = directory._session
    await directory.lookup("partnerId", "C1002")
    assert directory._session is session and session is not None
    await directory.close()
    assert session.closed


async def test_http_not_found_is_none(fake_enterprise: FakeEnterprise) -> None:
    directory, outcomes = http_directory(fake_enterprise)
    assert await directory.lookup("partnerId", "C9999") is None
    await directory.close()
    assert [o for _, o in outcomes] == ["not_found"]


@pytest.mark.parametrize("status", [500, 502, 503, 401, 429])
async def test_http_failure_status_is_upstream_error(fake_enterprise: FakeEnterprise, status: int) -> None:
    fake_enterprise.fail_with = status
    directory, outcomes = http_directory(fake_enterprise)
    with pytest.raises(UpstreamError, match=str(status)):
        await directory.lookup("partnerId", "C1001")
    await directory.close()
    assert [o for _, o in outcomes] == ["error"]


async def test_http_wrong_token_is_upstream_error_and_never_logged(
    fake_enterprise: FakeEnterprise, caplog: pytest.LogCaptureFixture
) -> None:
    directory, _ = http_directory(fake_enterprise, token="wrong-token-value")
    with caplog.at_level(logging.DEBUG), pytest.raises(UpstreamError, match="401") as raised:
        await directory.lookup("partnerId", "C1001")
    await directory.close()
    assert "wrong-token-value" not in caplog.text + str(raised.value) + repr(directory)


async def test_http_without_token_sends_no_authorization(fake_enterprise: FakeEnterprise) -> None:
    fake_enterprise.token = None
    directory, _ = http_directory(fake_enterprise, token=None)
    assert await directory.lookup("partnerId", "C1001") is not None
    await directory.close()
    assert fake_enterprise.authorizations == [None]


async def test_http_timeout_is_upstream_error(fake_enterprise: FakeEnterprise) -> None:
    fake_enterprise.latency = 1.0
    directory, outcomes = http_directory(fake_enterprise, timeout_s=0.1)
    with pytest.raises(UpstreamError, match="timeout"):
        await directory.lookup("partnerId", "C1001")
    await directory.close()
    assert [o for _, o in outcomes] == ["timeout"]
    assert outcomes[0][0] < 0.9


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'{"partnerId": "C1"}', b'{"partnerId":"C1","name":"x","orders":[{"status":9}]}'],
    ids=["broken-json", "not-an-object", "missing-name", "bad-order"],
)
async def test_http_unreadable_answer_is_upstream_error(fake_enterprise: FakeEnterprise, body: bytes) -> None:
    fake_enterprise.raw_body = body
    directory, outcomes = http_directory(fake_enterprise)
    with pytest.raises(UpstreamError, match="invalid answer"):
        await directory.lookup("partnerId", "C1001")
    await directory.close()
    assert [o for _, o in outcomes] == ["error"]


async def test_http_connection_refused_is_upstream_error(unused_tcp_port: int) -> None:
    directory = HttpDirectory(f"http://127.0.0.1:{unused_tcp_port}", None, 1.0, None)
    with pytest.raises(UpstreamError, match="connection"):
        await directory.lookup("partnerId", "C1001")
    await directory.close()


async def test_http_url_encodes_values(fake_enterprise: FakeEnterprise) -> None:
    directory, _ = http_directory(fake_enterprise)
    assert await directory.lookup("email", "a+b&partnerId=C1001@example.cn") is None
    await directory.close()
    assert fake_enterprise.calls == {"email:a+b&partnerId=C1001@example.cn": 1}


# --- choosing the directory ------------------------------------------------------------------


class PluginDirectory:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def lookup(self, key: str, value: str) -> Customer | None:
        return Customer(partnerId=value, name="plugin")

    async def close(self) -> None:
        return None


def not_a_directory(settings: Settings) -> object:
    return object()


def use_entry_points(monkeypatch: pytest.MonkeyPatch, **targets: str) -> None:
    points = [EntryPoint(name, value, plugins.ENTRY_POINT_GROUP) for name, value in targets.items()]

    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        return points if group == plugins.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(plugins, "entry_points", fake_entry_points)


def test_sample_directory_by_default(make_settings: Callable[..., Settings]) -> None:
    assert isinstance(_load(make_settings()), SampleDirectory)


def test_http_directory_when_url_is_set(make_settings: Callable[..., Settings]) -> None:
    calls: list[tuple[float, str]] = []
    settings = make_settings(directory_url="https://crm.example.cn/api/", directory_token="t0k", directory_timeout=1.5)
    directory = _load(settings, on_call=lambda s, o: calls.append((s, o)))
    assert isinstance(directory, HttpDirectory)
    assert directory.base_url == "https://crm.example.cn/api"
    assert directory._headers["Authorization"] == "Bearer t0k"
    assert directory._timeout.total == 1.5 and directory._timeout.connect == 1.0


async def test_plugin_is_loaded_by_name(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_entry_points(monkeypatch, crm=f"{__name__}:PluginDirectory")
    settings = make_settings(directory_plugin="crm", directory_url="https://ignored.example.cn")
    directory = _load(settings)
    assert isinstance(directory, PluginDirectory) and isinstance(directory, Directory)
    assert directory.settings is settings
    customer = await directory.lookup("partnerId", "P1")
    assert customer is not None and customer.name == "plugin"


def test_unknown_plugin_names_the_available_ones(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_entry_points(monkeypatch, crm=f"{__name__}:PluginDirectory", erp=f"{__name__}:PluginDirectory")
    with pytest.raises(ValueError, match=r"PANEL_DIRECTORY_PLUGIN.*'sap'.*available: crm, erp"):
        _load(make_settings(directory_plugin="sap"))


def test_plugin_must_return_a_directory(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_entry_points(monkeypatch, odd=f"{__name__}:not_a_directory")
    with pytest.raises(ValueError, match="not a Directory"):
        _load(make_settings(directory_plugin="odd"))


def _load(settings: Settings, on_call: Any = None) -> Directory:
    """The directory the single-company settings ask for, as the service loads it."""
    token = settings.directory_token.get_secret_value() if settings.directory_token else None
    return plugins.load_directory(plugin=settings.directory_plugin, url=settings.directory_url, token=token,
                                  timeout_s=settings.directory_timeout, settings=settings, on_call=on_call)  # fmt: skip
