"""The application's typed keys and the small objects stored under them."""

from __future__ import annotations

from pathlib import Path

import jinja2
from aiohttp import web

from .audit import AuditLog
from .directory.cache import CustomerCache
from .directory.models import Directory
from .i18n import Catalog
from .keys import Keys
from .observability import Metrics
from .redis import EmbeddedRedis, RedisClient
from .rendering import Renderer
from .settings import Settings
from .signing import SignPolicy
from .ticket_fields import TicketField

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

SETTINGS = web.AppKey("settings", Settings)
KEYS = web.AppKey("keys", Keys)
CATALOG = web.AppKey("catalog", Catalog)
JINJA = web.AppKey("jinja", jinja2.Environment)
METRICS = web.AppKey("metrics", Metrics)
TICKET_FIELDS = web.AppKey("ticket_fields", list[TicketField])
EMBEDDED_REDIS = web.AppKey("embedded_redis", EmbeddedRedis)
REDIS = web.AppKey[RedisClient]("redis")
DIRECTORY = web.AppKey("directory", Directory)
CACHE = web.AppKey("cache", CustomerCache)
AUDIT = web.AppKey("audit", AuditLog)
RENDERER = web.AppKey("renderer", Renderer)



class Signer:
    """The sign policy in force. WeCom's secret may arrive later from Sobot's gateway (SPEC §3.4)."""

    def __init__(self, settings: Settings) -> None:
        self.policy = SignPolicy(
            sys_num=settings.sysnum,
            secret=settings.secret_value(),
            wecom_secret=settings.wecom_secret_value(),
            max_age_s=settings.sign_max_age,
        )

    def use_wecom_secret(self, secret: str | None) -> None:
        self.policy = SignPolicy(
            sys_num=self.policy.sys_num, secret=self.policy.secret, wecom_secret=secret,
            max_age_s=self.policy.max_age_s,
        )  # fmt: skip


def make_jinja(catalog: Catalog) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(WEB_DIR / "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
        undefined=jinja2.StrictUndefined,
    )
    env.globals["catalog"] = catalog
    return env
SIGNER = web.AppKey("signer", Signer)
