"""Which fields of a verified context may choose the customer a panel shows. Pure: no I/O.

Sobot signs only some fields (SPEC §3). With the security key on, only what it signs may select:

| surface | signed customer keys | unsigned, may only narrow |
|---|---|---|
| `workbench` | `partnerId` | `uid` |
| `call`, `call-task`, `ticket`, `customer`, `qa`, `monitor` | `uphone`, `uemail` | `partnerId`, `uid` |
| `wecom` (WeCom secret on) | `partnerId`, `tel`, `wxUnionId`, `wxBuildUnionId` | none |

A context whose sign covers no customer key (an anonymous workbench chat, a customer-center sign with no
phone and no email) shows no customer: `MD5(sysNum + secret + timestamp)` verifies on every surface, so
accepting it with an unsigned key would let any recent sign open any customer.

Without a secret (the legacy sign, or WeCom without its secret: a sign anyone can compute) nothing about
the customer is signed: every key may select, as before, and the panel says the customer is unverified.
An operator who accepts that risk in secret mode may name unsigned keys to trust (`PANEL_TRUST_UNSIGNED`);
a customer found only through one of them is shown as unverified too.
"""

from __future__ import annotations

from dataclasses import dataclass

from .signing import SignMode
from .surfaces import Surface, SurfaceContext

# Unsigned keys an operator may choose to trust in secret mode (`PANEL_TRUST_UNSIGNED`).
TRUSTABLE = ("partnerId", "uid")
# The customer API's lookup names (CONTRACT), in the order keys are tried.
LOOKUP_ORDER = ("partnerId", "phone", "email", "uid", "unionId")

Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Selection:
    """How a context may choose its customer.

    `signed`: (lookup name, value) pairs Sobot's sign covers; `trusted`: unsigned pairs the operator chose
    to trust; `narrowing`: unsigned (customer field, value) pairs that may not override the signed ones;
    `secret`: whether the sign involved a secret at all (False: legacy or WeCom without its secret).
    """

    signed: Pairs
    trusted: Pairs
    narrowing: Pairs
    secret: bool

    @property
    def keys(self) -> Pairs:
        """Everything that may select, most trustworthy first."""
        return self.signed + self.trusted

    @property
    def has_customer_key(self) -> bool:
        return bool(self.keys)


def _pairs(*items: tuple[str, str]) -> Pairs:
    return tuple([(name, value.strip()) for name, value in items if value and not value.isspace()])


def _all_keys(context: SurfaceContext) -> Pairs:
    return _pairs(
        ("partnerId", context.partner_id),
        ("phone", context.phone),
        ("email", context.customer_email),
        ("uid", context.user_id),
        ("unionId", context.union_id),
    )


def select_customer(surface: Surface, context: SurfaceContext, mode: SignMode, trusted: frozenset[str]) -> Selection:
    """The keys of `context` that may select its customer under the sign `mode` it verified with."""
    if mode in (SignMode.LEGACY, SignMode.WECOM):
        return Selection(signed=(), trusted=_all_keys(context), narrowing=(), secret=False)
    if surface is Surface.WECOM:
        return Selection(signed=_all_keys(context), trusted=(), narrowing=(), secret=True)
    if surface is Surface.WORKBENCH:
        signed = _pairs(("partnerId", context.partner_id))
        unsigned = _pairs(("uid", context.user_id))
    else:
        signed = _pairs(("phone", context.phone), ("email", context.customer_email))
        unsigned = _pairs(("partnerId", context.partner_id), ("uid", context.user_id))
    if not trusted:  # the usual case: every unsigned key only narrows
        return Selection(signed=signed, trusted=(), narrowing=unsigned, secret=True)
    chosen = tuple(pair for pair in unsigned if pair[0] in trusted)
    narrowing = tuple(pair for pair in unsigned if pair[0] not in trusted)
    return Selection(signed=signed, trusted=chosen, narrowing=narrowing, secret=True)


def matches(selection_pairs: Pairs, customer: dict[str, str]) -> bool:
    """Whether the customer (its lookup fields) carries one of these key values (emails without case)."""
    for name, value in selection_pairs:
        held = customer.get(name, "").strip()
        if held and (held.casefold() == value.casefold() if name == "email" else held == value):
            return True
    return False


def disagreements(selection: Selection, customer: dict[str, str]) -> list[str]:
    """The unsigned fields whose value contradicts the customer the signed keys found (they never win)."""
    return [name for name, value in selection.narrowing if customer.get(name, "").strip() not in ("", value)]
