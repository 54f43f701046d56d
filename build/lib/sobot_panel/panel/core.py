"""The panel core: verify → look up → render → token, in one object used by `/embed`, `/ws` and the host
simulator alike.

`PanelCore` is built once in `create_app` with everything it needs passed in. Its one entry point,
`build()`, turns a surface, a verified context, a language and a view into a `Panel`: the rendered
fragment, the customer it shows, and a fresh session token with its claims. A page wraps that fragment
in the page shell (`page()`); a websocket push sends it as it is.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from typing import Any

from ..clock import now_ms
from ..directory.cache import CacheResult, CustomerCache
from ..directory.models import Customer, LookupKeys, UpstreamError
from ..errors import Code, SignError, Unavailable
from ..i18n import Lang
from ..observability import Metrics
from ..protocol.security import SessionClaims, SessionTokens
from ..protocol.signing import SignPolicy, verify_sign
from ..protocol.surfaces import Surface, SurfaceContext, View, parse_fields, parse_query_string
from .rendering import Renderer


class Signer:
    """The sign policy in force. WeCom's secret may arrive later from Sobot's gateway (SPEC §3.4)."""

    def __init__(self, policy: SignPolicy) -> None:
        self.policy = policy

    def use_wecom_secret(self, secret: str | None) -> None:
        p = self.policy
        self.policy = SignPolicy(sys_num=p.sys_num, secret=p.secret, wecom_secret=secret, max_age_s=p.max_age_s)


@dataclass(frozen=True, slots=True)
class Panel:
    """What one verified context shows, ready for a page or a push."""

    surface: Surface
    context: SurfaceContext | None  # None: the waiting shell of SPEC §4's postMessage mode
    result: CacheResult | None  # None: no lookup (waiting, or no customer key in the context)
    parts: list[bytes]  # the fragment's HTML as UTF-8 pieces; empty for the waiting shell
    token: str
    claims: SessionClaims

    @property
    def customer(self) -> Customer | None:
        return self.result.customer if self.result else None

    @property
    def html(self) -> str:
        return b"".join(self.parts).decode()


def new_session_id() -> str:
    return secrets.token_urlsafe(12)


def lookup_keys(context: SurfaceContext) -> LookupKeys:
    return LookupKeys(
        partner_id=context.partner_id,
        phone=context.phone,
        email=context.customer_email,
        uid=context.user_id,
        union_id=context.union_id,
    )


class PanelCore:
    def __init__(
        self,
        *,
        signer: Signer,
        cache: CustomerCache,
        renderer: Renderer,
        tokens: SessionTokens,
        metrics: Metrics,
        session_ttl_s: int,
        boot: dict[str, Any],
    ) -> None:
        self.signer = signer
        self.cache = cache
        self.renderer = renderer
        self.tokens = tokens
        self._metrics = metrics
        self._ttl_ms = session_ttl_s * 1000
        self._boot = boot  # deployment-wide boot data (origins, card format, ...)

    # --- verify ----------------------------------------------------------------------------------

    def verify(self, surface: Surface, context: SurfaceContext) -> SurfaceContext:
        """The one gate for every context the server acts on: page loads and relayed selections alike.

        A refused sign is counted here, by reason, whichever way it arrived."""
        try:
            verify_sign(surface, context.fields, self.signer.policy, now_ms())
        except SignError as error:
            self._metrics.sign_failures.labels(error.code).inc()
            raise
        return context

    def verify_query(self, surface: Surface, raw_query: str) -> SurfaceContext:
        """A page's raw query string, parsed once and verified."""
        return self.verify(surface, parse_query_string(surface, raw_query))

    def verify_fields(self, surface: Surface, fields: dict[str, str]) -> SurfaceContext:
        """The `query` of a relayed `selected` message, parsed and verified exactly like a page's."""
        return self.verify(surface, parse_fields(surface, fields))

    # --- build -----------------------------------------------------------------------------------

    async def build(
        self, surface: Surface, context: SurfaceContext | None, lang: Lang, view: View | None, *, session: str = ""
    ) -> Panel:
        """Look the context's customer up and render it, with a fresh session token for what is shown.

        `session` is the session a push continues; a page load (none given) starts a new one."""
        result = await self._lookup(context) if context is not None else None
        parts = self._fragment(surface, context, result, lang, view) if context is not None else []
        claims = self._claims(surface, context, result.customer if result else None, session or new_session_id())
        return Panel(surface, context, result, parts, self.tokens.issue(claims), claims)

    async def _lookup(self, context: SurfaceContext) -> CacheResult | None:
        keys = lookup_keys(context)
        if keys.is_empty:
            return None
        try:
            result = await self.cache.get(keys)
        except UpstreamError as error:
            raise Unavailable(Code.UPSTREAM_UNAVAILABLE) from error
        self._metrics.cache_lookups.labels(result.source).inc()
        return result

    def _fragment(
        self, surface: Surface, context: SurfaceContext, result: CacheResult | None, lang: Lang, view: View | None
    ) -> list[bytes]:
        tried = result.tried if result else lookup_keys(context).ordered()
        customer = result.customer if result else None
        stale = bool(result and result.stale)
        return self.renderer.fragment_parts(customer, context, lang, view, surface=surface, stale=stale, tried=tried)

    def _claims(
        self, surface: Surface, context: SurfaceContext | None, customer: Customer | None, session: str
    ) -> SessionClaims:
        return SessionClaims(
            surface=surface.value,
            agent=context.agent if context else "",
            partner_id=(customer.partnerId if customer else "") or (context.partner_id if context else ""),
            uid=context.user_id if context else "",
            cid=context.chat_id if context else "",
            mini_program=bool(customer and customer.channel == "miniprogram"),
            expires_ms=now_ms() + self._ttl_ms,
            context=tuple((k, v) for k, v in context.fields.items() if k != "sign" and v) if context else (),
            session=session,
        )

    # --- pages and sessions ----------------------------------------------------------------------

    def page(self, panel: Panel, lang: Lang, view: View | None) -> bytes:
        """The whole page around a panel's fragment, with its boot data."""
        boot = {
            "token": panel.token,
            "surface": panel.surface.value,
            "view": view.value if view else None,
            "lang": lang,
            **self._boot,
            "partnerId": panel.customer.partnerId if panel.customer else "",
            # When the page's sign was made and the server's clock now: panel.js knows whether reloading
            # its own signed URL would still verify when its session ends.
            "signedAt": panel.context.signed_at_ms if panel.context else None,
            "now": now_ms(),
        }
        return self.renderer.page(lang, panel.surface, boot, panel.parts if panel.context is not None else None)

    def session(self, token: str) -> SessionClaims:
        """The claims of a token this deployment issued and that has not expired, else TokenError (401)."""
        return self.tokens.read(token, now_ms())

    def context_of(self, claims: SessionClaims) -> SurfaceContext | None:
        """The context a session vouches for (verified when it was issued), or None for a waiting shell."""
        if not claims.context:
            return None
        return parse_fields(Surface(claims.surface), dict(claims.context))

    def renewed(self, claims: SessionClaims) -> tuple[SessionClaims, str] | None:
        """Past half its life a session is renewed, so a long-lived panel never holds a dead token."""
        now = now_ms()
        if claims.expires_ms - now >= self._ttl_ms // 2:
            return None
        fresh = dataclasses.replace(claims, expires_ms=now + self._ttl_ms)
        return fresh, self.tokens.issue(fresh)
