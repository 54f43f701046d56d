"""Every typed key the application stores objects under, in one place (aiohttp's `web.AppKey`).

Domain modules never read the application; handlers and the wiring in `app.py` do, through these keys.
"""

from __future__ import annotations

from aiohttp import web

from .audit.producer import AuditLog
from .directory.cache import CustomerCache
from .directory.models import Directory
from .i18n import Catalog
from .lifecycle import Lifecycle
from .live.hub import LiveHub
from .observability import Metrics
from .ops.feed import OpsCounter, OpsFeed
from .panel.core import PanelCore
from .protocol.ticket_fields import TicketField
from .redis import EmbeddedRedis, Keys, RedisClient
from .settings import Settings

SETTINGS = web.AppKey("settings", Settings)
KEYS = web.AppKey("keys", Keys)
CATALOG = web.AppKey("catalog", Catalog)
METRICS = web.AppKey("metrics", Metrics)
TICKET_FIELDS = web.AppKey("ticket_fields", list[TicketField])
CSP = web.AppKey("content_security_policy", str)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)

EMBEDDED_REDIS = web.AppKey("embedded_redis", EmbeddedRedis)
REDIS = web.AppKey[RedisClient]("redis")
DIRECTORY = web.AppKey("directory", Directory)
CACHE = web.AppKey("cache", CustomerCache)
CORE = web.AppKey("panel_core", PanelCore)
AUDIT = web.AppKey("audit", AuditLog)
HUB = web.AppKey("live_hub", LiveHub)
OPS_FEED = web.AppKey("ops_feed", OpsFeed)
OPS_COUNTER = web.AppKey("ops_counter", OpsCounter)

REQUEST_ID = web.RequestKey("request_id", str)
# A response already on the wire (a websocket after its upgrade, an event stream): the error middleware ends
# it and never writes an HTTP error page into it.
STARTED = web.RequestKey("started_response", web.StreamResponse)
