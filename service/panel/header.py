"""The per-request panel header (`_context.html`) compiled to string pieces. Pure: no I/O.

The header (stale notice, the customer's name, the agent and the conversation's details) is the one part
of a page rendered on every request. A Jinja2 render of it cost more than all the rest of the panel's
own work on a hot page (a fresh template context, a chain of lookups per variable, a `Markup` per
value), so it is built here from pieces translated and escaped once per language, with only the values
of the request escaped per request. `web/templates/_context.html` stays the reference: the tests render
both and require the same bytes, so an edit to one without the other fails them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from markupsafe import escape

from ..directory.models import Customer
from ..protocol.surfaces import SurfaceContext

Translate = Callable[[str], str]


def _e(value: str) -> str:
    """markupsafe's escape of a text, without a Markup object per value (the same five characters)."""
    if "&" in value or "<" in value or ">" in value or '"' in value or "'" in value:
        return str(escape(value))
    return value


class HeaderPieces:
    """One language's header: the translated, escaped static text, and the per-request assembly."""

    def __init__(self, t: Translate) -> None:
        self._t = t
        self._stale = f'<p class="notice notice-stale" role="note" data-part="stale">{_e(t("stale_notice"))}</p>'
        self._unverified = (f' <span class="badge badge-unverified" data-testid="unverified" '
                            f'title="{_e(t("unverified_hint"))}">{_e(t("unverified"))}</span>')  # fmt: skip
        self._details = f'<details class="ctx-more" data-testid="context">\n<summary>{_e(t("ctx_more"))}'
        self._agent = f'<dl class="ctx" data-testid="context-fields">\n<div><dt>{_e(t("agent"))}</dt><dd>'
        self._ivr = f'<ol class="ivr" aria-label="{_e(t("ctx_ivrPath"))}" data-testid="ivr">\n'
        self._labels: dict[str, str] = {}

    def _label(self, code: str) -> str:
        label = self._labels.get(code)
        if label is None:
            label = self._labels[code] = _e(self._t(code))
        return label

    def render(
        self,
        customer: Customer | None,
        context: SurfaceContext | None,
        *,
        stale: bool,
        peek: str,
        verified: bool,
        display_fields: Sequence[tuple[str, str]],
    ) -> str:
        """Byte for byte what `_context.html` renders with the same arguments."""
        out: list[str] = []
        if stale:
            out.append(self._stale)
        out.append('<header class="who" data-part="who">\n')
        if customer:
            out.append(f'<h1 class="who-name" data-testid="customer-name"><span class="who-text">{_e(customer.name)}'
                       "</span>")  # fmt: skip
            if customer.level:
                out.append(f' <span class="badge badge-level">{_e(customer.level)}</span>')
            if not verified:
                out.append(self._unverified)
            out.append("</h1>\n")
        if context:
            out.append(self._details)
            if peek:
                out.append(f'<span class="ctx-peek"> · {_e(peek)}</span>')
            out.append("</summary>\n")
            out.append(self._agent)
            out.append(_e(context.agent or "—"))
            out.append("</dd></div>\n")
            for label, value in display_fields:
                out.append(f"<div><dt>{self._label(label)}</dt><dd>{_e(value)}</dd></div>\n")
            out.append("</dl>\n")
            steps: Any = getattr(context, "ivrPath", None)
            if steps:
                out.append(self._ivr)
                out.extend(f"<li><kbd>{_e(step.navKey)}</kbd> {_e(step.navName)}</li>" for step in steps)
                out.append("</ol>\n")
            out.append("</details>\n")
        out.append("</header>")  # Jinja2 drops a template's last newline
        return "".join(out)
