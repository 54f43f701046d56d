"""Errors that carry a stable code, an HTTP status and the values their message needs.

The words live in the message catalog (`web/i18n/*.json`), never here: a handler turns an error
into a page or an error frame in the agent's language with `service.i18n.Catalog.error_text`.
"""

from __future__ import annotations


class PanelError(Exception):
    """Base of every error an agent may see. `code` is a catalog key, `params` fill its placeholders."""

    status = 400

    def __init__(self, code: str, *, field: str | None = None, **params: object) -> None:
        super().__init__(code)
        self.code = code
        self.field = field
        self.params: dict[str, object] = {"field": field or "", **params}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, field={self.field!r}, params={self.params!r})"


class QueryError(PanelError):
    """The query is malformed: bad JSON in params/ivrPath, a non-integer timestamp, ... (HTTP 400)."""

    status = 400


class SignError(PanelError):
    """The sign does not verify, or the timestamp is outside the window (HTTP 403)."""

    status = 403


class NotFound(PanelError):
    """Unknown surface or view (HTTP 404)."""

    status = 404


class Unavailable(PanelError):
    """Redis and the upstream are both unavailable with nothing cached (HTTP 503)."""

    status = 503


class PayloadError(PanelError):
    """A card or ticket payload breaks the rules of SPEC §5 (HTTP 422).

    `problems` lists every (field, code, params) found, so the panel can show them all at once.
    """

    status = 422

    def __init__(self, problems: list[tuple[str, str, dict[str, object]]]) -> None:
        first_field, first_code, first_params = problems[0]
        super().__init__(first_code, field=first_field, **first_params)
        self.problems = problems
