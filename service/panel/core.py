"""The panel core: verify → look up → render → token, in one object used by `/embed`, `/ws` and the host
simulator alike.

`PanelCore` is built once in `create_app` with everything it needs passed in. Its one entry point,
`build()`, turns a surface, a verified context, a language and a view into a `Panel`: the rendered
fragment, the customer it shows, and a fresh session token with its claims. A page wraps that fragment
in the page shell (`page()`); a websocket push sends it as it is.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from ..clock import now_ms
from ..directory.cache import CacheResult, CustomerCache
from ..directory.models import Customer, UpstreamError
from ..errors import Code, SignError, TokenError, Unavailable
from ..i18n import Lang
from ..observability import Metrics
from ..protocol.signing import SignMode, SignPolicy, sign_mode, verify_sign
from ..protocol.surfaces import Surface, SurfaceContext, View, parse_fields, parse_query_string
from ..protocol.tokens import SessionClaims, SessionTokens
from ..protocol.trust import Selection, disagreements, matches, select_customer
from .rendering import Renderer, Splice, SplicedJson

# The members of a page's boot data that change with every page; the rest is encoded once per
# surface, view and language.
_TOKEN, _PARTNER, _SIGNED_AT, _NOW = Splice("token"), Splice("partnerId"), Splice("signedAt"), Splice("now")


class Signer:
    """The sign policy in force. WeCom's secret may arrive later from Sobot's gateway (SPEC §3.4)."""

    def __init__(self, policy: SignPolicy) -> None:
        self.policy = policy

    def use_wecom_secret(self, secret: str | None) -> None:
        self.policy = dataclasses.replace(self.policy, wecom_secret=secret)


@dataclass(frozen=True, slots=True)
class Lookup:
    """Who a verified context's customer is, and how far Sobot's sign vouches for that."""

    selection: Selection
    result: CacheResult | None  # None: no key may select a customer (nothing was looked up)
    verified: bool  # the customer carries a key Sobot signed with the secret

    @property
    def customer(self) -> Customer | None:
        return self.result.customer if self.result else None


@dataclass(frozen=True, slots=True)
class Panel:
    """What one verified context shows, ready for a page or a push."""

    surface: Surface
    context: SurfaceContext | None  # None: the waiting shell of SPEC §4's postMessage mode
    lookup: Lookup | None  # None for the waiting shell
    parts: list[bytes]  # the fragment's HTML as UTF-8 pieces; empty for the waiting shell
    token: str
    claims: SessionClaims

    @property
    def customer(self) -> Customer | None:
        return self.lookup.customer if self.lookup else None

    @property
    def html(self) -> str:
        return b"".join(self.parts).decode()


def customer_keys(customer: Customer) -> dict[str, str]:
    """The customer's values of the lookup names, to hold against a context's keys."""
    return {"partnerId": customer.partnerId, "phone": customer.phone, "email": customer.email, "uid": customer.uid,
            "unionId": customer.unionId}  # fmt: skip


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
        session_max_age_s: int,
        boot: dict[str, Any],
        trusted_unsigned: frozenset[str] = frozenset(),
        tenant: str = "",
    ) -> None:
        self.signer = signer
        self.cache = cache
        self.renderer = renderer
        self.tokens = tokens
        self._metrics = metrics
        self._trusted = trusted_unsigned
        self.tenant = tenant  # whose sessions these are: a token of another company is never accepted
        self._ttl_ms = session_ttl_s * 1000
        self._max_age_ms = session_max_age_s * 1000
        self._boot = boot  # deployment-wide boot data (origins, card format, ...)
        self._boots: dict[tuple[Surface, View | None, Lang], SplicedJson] = {}

    # --- verify ----------------------------------------------------------------------------------

    def verify(self, surface: Surface, context: SurfaceContext) -> SurfaceContext:
        """The one gate for every context the server acts on: page loads and relayed selections alike.

        A refused sign is counted here, by reason, whichever way it arrived."""
        try:
            mode = verify_sign(surface, context.fields, self.signer.policy, now_ms())
        except SignError as error:
            self._metrics.sign_failures.labels(error.code, self.tenant).inc()
            raise
        if mode is SignMode.SECRET_PREVIOUS:
            # the rotation is not over while this still counts
            self._metrics.previous_secret_signs.labels(self.tenant).inc()
        return context

    def verify_query(self, surface: Surface, raw_query: str) -> SurfaceContext:
        """A page's raw query string, parsed once and verified."""
        return self.verify(surface, parse_query_string(surface, raw_query))

    def verify_fields(self, surface: Surface, fields: dict[str, str]) -> SurfaceContext:
        """The `query` of a relayed `selected` message, parsed and verified exactly like a page's."""
        return self.verify(surface, parse_fields(surface, fields))

    # --- build -----------------------------------------------------------------------------------

    async def build(
        self,
        surface: Surface,
        context: SurfaceContext | None,
        lang: Lang,
        view: View | None,
        *,
        session: SessionClaims | None = None,
        signed_now: bool = True,
        with_token: bool = True,
    ) -> Panel:
        """Look the context's customer up and render it, with a token for what is shown.

        `session`: the session this panel continues (a relay or a resync on an open socket keeps its id);
        `signed_now`: the context's sign was verified just now (a page load, a relayed `selected`), so the
        session's absolute lifetime starts again; a resync of the context a token already holds keeps it.
        `with_token=False`: the token is left empty, for a caller that may not send this panel at all
        (`tokens.issue(panel.claims)` mints it)."""
        found = await self.lookup(surface, context) if context is not None else None
        parts = self._fragment(surface, context, found, lang, view) if context is not None and found is not None else []
        claims = self._claims(surface, context, found.customer if found else None, session, signed_now)
        return Panel(surface, context, found, parts, self.tokens.issue(claims) if with_token else "", claims)

    async def lookup(self, surface: Surface, context: SurfaceContext) -> Lookup:
        """The customer the context's trusted keys select (ARCHITECTURE, "The trust model")."""
        selection = select_customer(surface, context, sign_mode(surface, self.signer.policy), self._trusted)
        if not selection.has_customer_key:
            return Lookup(selection, None, verified=False)
        try:
            result = await self.cache.get(selection.keys)
        except UpstreamError as error:
            raise Unavailable(Code.UPSTREAM_UNAVAILABLE) from error
        self._metrics.child(self._metrics.cache_lookups, result.source, self.tenant).inc()
        if result.customer is None:
            return Lookup(selection, result, verified=False)
        held = customer_keys(result.customer)
        for field in disagreements(selection, held):
            # An unsigned key that contradicts the signed one never wins; it is counted, not shown.
            self._metrics.child(self._metrics.unsigned_disagreements, surface.value, field, self.tenant).inc()
        return Lookup(selection, result, verified=selection.secret and matches(selection.signed, held))

    def _fragment(
        self, surface: Surface, context: SurfaceContext, found: Lookup, lang: Lang, view: View | None
    ) -> list[bytes]:
        result = found.result
        return self.renderer.fragment_parts(
            found.customer,
            context,
            lang,
            view,
            surface=surface,
            stale=bool(result and result.stale),
            tried=result.tried if result else [],
            verified=found.verified,
            no_signed_key=found.selection.secret and not found.selection.has_customer_key,
            received=list(found.selection.narrowing),
        )

    def _claims(
        self,
        surface: Surface,
        context: SurfaceContext | None,
        customer: Customer | None,
        session: SessionClaims | None,
        signed_now: bool,
    ) -> SessionClaims:
        now = now_ms()
        born = now if signed_now or session is None else session.born_ms
        return SessionClaims(
            surface=surface.value,
            agent=context.agent if context else "",
            # only the customer the panel shows (found by trusted keys), never an unsigned field as sent
            partner_id=customer.partnerId if customer else "",
            uid=context.user_id if context else "",
            cid=context.chat_id if context else "",
            mini_program=bool(customer and customer.channel == "miniprogram"),
            expires_ms=min(now + self._ttl_ms, born + self._max_age_ms),
            context=tuple([(k, v) for k, v in context.fields.items() if k != "sign" and v]) if context else (),
            born_ms=born,
            session_id=session.session_id if session else os.urandom(8).hex(),  # secrets.token_hex(8), cheaper
            tenant=self.tenant,
        )

    # --- pages and sessions ----------------------------------------------------------------------

    def page(self, panel: Panel, lang: Lang, view: View | None) -> bytes:
        """The whole page around a panel's fragment, with its boot data."""
        boot = self._boots.get((panel.surface, view, lang))
        if boot is None:
            boot = self._boots[(panel.surface, view, lang)] = SplicedJson(self.boot(panel.surface, view, lang))
        values = (panel.token, panel.customer.partnerId if panel.customer else "",
                  panel.context.signed_at_ms if panel.context else None, now_ms())  # fmt: skip
        return self.renderer.page(
            lang, panel.surface, boot.fill(values), panel.parts if panel.context is not None else None
        )

    def boot(
        self, surface: Surface, view: View | None, lang: Lang, token: object = _TOKEN, partner_id: object = _PARTNER,
        signed_at: object = _SIGNED_AT, now: object = _NOW,
    ) -> dict[str, Any]:  # fmt: skip
        """A page's boot data (with markers for the values `page()` puts in per page)."""
        return {
            "token": token,
            "surface": surface.value,
            "view": view.value if view else None,
            "lang": lang,
            **self._boot,
            "partnerId": partner_id,
            # When the page's sign was made and the server's clock now: panel.js knows whether reloading
            # its own signed URL would still verify when its session ends.
            "signedAt": signed_at,
            "now": now,
        }

    def session(self, token: str) -> SessionClaims:
        """The claims of a token this company's panel was issued and that has not expired, else TokenError
        (401): a token of another company of the same deployment is refused like a forged one."""
        claims = self.tokens.read(token, now_ms())
        if claims.tenant != self.tenant:
            raise TokenError(Code.TOKEN_INVALID)
        return claims

    def context_of(self, claims: SessionClaims) -> SurfaceContext | None:
        """The context a session vouches for (verified when it was issued), or None for a waiting shell."""
        if not claims.context:
            return None
        return parse_fields(Surface(claims.surface), dict(claims.context))

    def renewed(self, claims: SessionClaims) -> tuple[SessionClaims, str] | None:
        """Past half its life a token is renewed, so a long-lived panel never holds a dead one; never past
        the session's absolute end (`born + max age`), after which only a freshly signed context will do."""
        expires = self._renewal(claims)
        if expires is None:
            return None
        fresh = dataclasses.replace(claims, expires_ms=expires)
        return fresh, self.tokens.issue(fresh)

    def renewal_due(self, claims: SessionClaims) -> bool:
        """Whether `renewed` would renew this token (asked without minting one)."""
        return self._renewal(claims) is not None

    def _renewal(self, claims: SessionClaims) -> int | None:
        now = now_ms()
        expires = min(now + self._ttl_ms, claims.born_ms + self._max_age_ms)
        if claims.expires_ms - now >= self._ttl_ms // 2 or expires <= claims.expires_ms:
            return None
        return expires
