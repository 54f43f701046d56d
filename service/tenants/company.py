"""One Sobot company this deployment serves, with everything that is its own: the sign rules, the customer
directory behind its cache, the panel core, the audit stream with its spool and retention, and the ops
consumer. The single-company settings make the company named "" (served at `/embed/...`); each
`[tenants.NAME]` of PANEL_TENANTS makes one served at `/t/NAME/...`.

What companies share is handed in once (`Shared`): the Redis client, the session token keys, the metrics,
the templates and catalog, the one pub/sub reader. A company's Redis keys and channels all live under its
own prefix (`panel:NAME:`), so nothing of one can be read, invalidated or audited through another.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
from dataclasses import dataclass, field

import jinja2

from ..audit.producer import AuditLog
from ..audit.retention import Retention, RetentionPolicy
from ..audit.spool import Spool
from ..directory.cache import CustomerCache
from ..directory.models import Directory
from ..directory.plugins import load_directory
from ..i18n import Catalog, Lang
from ..observability import Metrics
from ..ops.feed import OpsCounter, OpsFeed
from ..panel.core import PanelCore, Signer
from ..panel.rendering import Renderer
from ..protocol.security import content_security_policy
from ..protocol.signing import SignPolicy
from ..protocol.surfaces import Surface
from ..protocol.ticket_fields import TicketField, load_ticket_fields
from ..protocol.tokens import SessionTokens
from ..redis import REDIS_DOWN, Keys, RedisClient
from ..redis.pubsub import PubSubReader, Router
from ..settings import Settings
from .config import CompanyConfig
from .guard import GuardedDirectory

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Shared:
    """What every company of the deployment uses alike."""

    settings: Settings
    redis: RedisClient
    base_keys: Keys
    tokens: SessionTokens
    metrics: Metrics
    jinja: jinja2.Environment
    catalog: Catalog
    reader: PubSubReader
    router: Router


@dataclass(eq=False)
class Company:
    name: str  # "" for the single-company settings
    config: CompanyConfig
    keys: Keys
    ticket_fields: list[TicketField]
    directory: Directory
    core: PanelCore
    audit: AuditLog
    csp: str
    feed: OpsFeed | None = None
    counter: OpsCounter | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def cache(self) -> CustomerCache:
        return self.core.cache

    @property
    def base(self) -> str:
        """Where its pages live: "" for the single company, `/t/NAME` for a tenant."""
        return f"/t/{self.name}" if self.name else ""

    @property
    def label(self) -> str:
        """Its value of the metrics' `tenant` label."""
        return self.name

    @functools.cached_property
    def card_surfaces(self) -> frozenset[Surface]:  # read on every send: parsed once per company
        return _surfaces(self.config.card_surfaces)

    @functools.cached_property
    def ticket_surfaces(self) -> frozenset[Surface]:
        return _surfaces(self.config.ticket_surfaces)

    @property
    def default_lang(self) -> Lang | None:
        """The UI language a tenant's panels start in (a `?lang=` still wins); None: the browser's choice."""
        return self.config.lang if self.name else None

    async def close(self) -> None:
        """Stop its background work and close what it opened (its spool's last replay included)."""
        self._stop.set()
        if self.feed is not None:
            self.feed.detach()
            self.feed.close_all()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 5.0)
        spool = self.audit.spool
        if spool is not None:
            await last_replay(self.audit, spool)
            spool.close()
        await self.directory.close()


def _surfaces(names: str) -> frozenset[Surface]:
    return frozenset(Surface(name) for name in names.split())


def keys_of(shared: Shared, name: str) -> Keys:
    return shared.base_keys.for_tenant(name) if name else shared.base_keys


async def open_company(name: str, config: CompanyConfig, shared: Shared) -> Company:
    """Open everything a company needs and start its background work (spool replay, retention, ops)."""
    settings, metrics = shared.settings, shared.metrics
    keys = keys_of(shared, name)
    ticket_fields = load_ticket_fields(config.ticket_fields)
    upstream = load_directory(
        plugin=config.directory_plugin,
        url=config.directory_url,
        token=config.directory_token.get_secret_value() if config.directory_token else None,
        timeout_s=settings.directory_timeout,
        settings=settings,
        on_call=lambda seconds, outcome: metrics.observe_upstream(seconds, outcome, tenant=name),
    )
    directory = GuardedDirectory(
        upstream, tenant=name, concurrency=settings.directory_concurrency, wait_s=settings.directory_timeout
    )
    cache = CustomerCache(
        shared.redis,
        directory,
        keys,
        ttl=settings.directory_ttl,
        negative_ttl=settings.directory_negative_ttl,
        local_ttl=settings.local_cache_ttl,
        local_size=settings.local_cache_size,
    )
    renderer = Renderer(
        shared.jinja,
        shared.catalog,
        ticket_fields,
        base_url=settings.base_url,
        card_format=config.card_format,
        card_surfaces=_surfaces(config.card_surfaces),
        ticket_surfaces=_surfaces(config.ticket_surfaces),
        customer_lang=settings.customer_lang,
    )
    policy = SignPolicy(
        sys_num=config.sysnum,
        secret=config.secret.get_secret_value() if config.secret else None,
        wecom_secret=config.wecom_secret.get_secret_value() if config.wecom_secret else None,
        max_age_s=settings.sign_max_age,
        previous_secret=config.secret_previous.get_secret_value() if config.secret_previous else None,
    )
    origins = config.host_origins.split()
    base = f"/t/{name}" if name else ""
    core = PanelCore(
        signer=Signer(policy),
        cache=cache,
        renderer=renderer,
        tokens=shared.tokens,
        metrics=metrics,
        session_ttl_s=settings.session_ttl,
        session_max_age_s=settings.session_max_age,
        boot={
            "origins": origins,
            "allowSelf": settings.demo,
            "cardFormat": config.card_format,
            "signMaxAge": settings.sign_max_age,
            "base": base,
        },
        trusted_unsigned=frozenset(config.trust_unsigned.split()),
        tenant=name,
    )
    spool_dir = settings.spool_path / name if name else settings.spool_path
    spool = Spool(spool_dir, max_bytes=settings.spool_max_bytes) if settings.spool_max_bytes else None
    audit = AuditLog(shared.redis, keys, spool=spool, idempotency_ttl_s=settings.audit_dedupe_ttl)
    company = Company(
        name=name,
        config=config,
        keys=keys,
        ticket_fields=ticket_fields,
        directory=directory,
        core=core,
        audit=audit,
        csp=content_security_policy(origins, allow_self=settings.demo),
    )
    # What a previous run, or a worker that died, left on this host goes in before we serve.
    with contextlib.suppress(*REDIS_DOWN):
        await asyncio.wait_for(audit.replay_spool(), timeout=10.0)
    _start(company, shared)
    return company


def _start(company: Company, shared: Shared) -> None:
    settings, stop, label = shared.settings, company._stop, company.name or "default"
    policy = RetentionPolicy(
        maxlen=None if settings.audit_max_age else settings.audit_maxlen,
        max_age_s=settings.audit_max_age,
        hard_maxlen=settings.audit_hard_limit,
    )
    retention = Retention(shared.redis, company.keys, policy, on_forced=shared.metrics.audit_forced_drops.inc)
    company._tasks += [
        asyncio.create_task(company.audit.run_replayer(stop), name=f"audit-spool-replayer:{label}"),
        asyncio.create_task(retention.run(stop, interval_s=settings.audit_trim_interval), name=f"retention:{label}"),
    ]
    if company.config.ops_token is None:
        return  # no dashboard, no consumer: the group is not created and builds no backlog
    company.feed = OpsFeed(shared.redis, company.keys, shared.reader, shared.router)
    company.feed.attach()
    if settings.ops_consumer == "off":
        return  # the dashboard is served here, but another deployment counts (PANEL_OPS_CONSUMER=on)
    consumer = f"ops-{os.uname().nodename}-{os.getpid()}-{secrets.token_hex(2)}"
    counter = OpsCounter(shared.redis, company.keys, consumer, claim_idle_ms=settings.audit_claim_idle_ms,
                         dead_after=settings.audit_dead_after)  # fmt: skip
    company.counter = counter
    company._tasks.append(asyncio.create_task(_run_until(counter, stop), name=f"ops-counter:{label}"))


async def _run_until(counter: OpsCounter, stop: asyncio.Event) -> None:
    runner = asyncio.create_task(counter.run())
    await stop.wait()
    counter.stop()
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        await asyncio.wait_for(runner, 3.0)


async def last_replay(audit: AuditLog, spool: Spool, timeout_s: float = 5.0) -> None:
    """On the way out: push what the spool holds while Redis answers, and say what stays on disk.

    A pod deleted during a Redis outage takes an emptyDir spool with it; this line is what tells.
    """
    error = ""
    try:
        await asyncio.wait_for(audit.replay_spool(), timeout=timeout_s)
    except REDIS_DOWN as failure:
        error = f" (Redis: {type(failure).__name__})"
    depth = await asyncio.to_thread(spool.depth)
    if depth.records:
        log.warning("audit spool: %d record(s) remain on disk at %s at exit%s; they are replayed by the next "
                    "process that uses this directory", depth.records, spool.directory, error)  # fmt: skip
    else:
        log.info("audit spool: empty at exit")
