"""Every typed key the application stores objects under, in one place (aiohttp's `web.AppKey`).

Domain modules never read the application; handlers and the wiring in `app.py` do, through these keys.
What belongs to one Sobot company (its panel core, cache, audit stream, ...) lives on its `Company`, found
through COMPANIES (`sobot_panel.tenants.routing.company_of` for a request).
"""

from __future__ import annotations

from aiohttp import web

from .i18n import Catalog
from .lifecycle import Lifecycle
from .live.hub import LiveHub
from .observability import Metrics
from .redis import EmbeddedRedis, Keys, RedisClient
from .redis.pubsub import PubSubReader
from .settings import Settings
from .tenants.company import Company
from .tenants.registry import Companies

SETTINGS = web.AppKey("settings", Settings)
KEYS = web.AppKey("keys", Keys)  # the single company's key names; a tenant's are Keys.for_tenant(NAME)
CATALOG = web.AppKey("catalog", Catalog)
METRICS = web.AppKey("metrics", Metrics)
CSP = web.AppKey("content_security_policy", str)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)

EMBEDDED_REDIS = web.AppKey("embedded_redis", EmbeddedRedis)
REDIS = web.AppKey[RedisClient]("redis")
PUBSUB = web.AppKey("pubsub", PubSubReader)
COMPANIES = web.AppKey("companies", Companies)
HUB = web.AppKey("live_hub", LiveHub)

REQUEST_ID = web.RequestKey("request_id", str)
COMPANY = web.RequestKey("company", Company)  # the company a request was routed to (CSP, metrics label)
# A response already on the wire (a websocket after its upgrade, an event stream): the error middleware ends
# it and never writes an HTTP error page into it.
STARTED = web.RequestKey("started_response", web.StreamResponse)
