"""Errors that carry a stable code, an HTTP status and the values their message needs.

The words live in the message catalog (`web/i18n/*.json`), never here: a handler turns an error
into a page or an error frame in the agent's language with `sobot_panel.i18n.Catalog.error_text`.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    """Every error code an agent or operator may meet; each is a key of the message catalog in both languages."""

    # the query and its sign (HTTP 400/403/404)
    BAD_ENCODING = "bad_encoding"
    BAD_IVR_JSON = "bad_ivr_json"
    BAD_PARAMS_JSON = "bad_params_json"
    BAD_TIMESTAMP = "bad_timestamp"
    JSON_TOO_DEEP = "json_too_deep"
    DUPLICATE_FIELD = "duplicate_field"
    QUERY_TOO_LONG = "query_too_long"
    VALUE_TOO_LONG = "value_too_long"
    UNKNOWN_SURFACE = "unknown_surface"
    UNKNOWN_VIEW = "unknown_view"
    PAGE_NOT_FOUND = "page_not_found"
    UNKNOWN_TENANT = "unknown_tenant"
    NO_SINGLE_COMPANY = "no_single_company"
    SIGN_EXPIRED = "sign_expired"
    SIGN_FUTURE = "sign_future"
    SIGN_MISMATCH = "sign_mismatch"
    SIGN_MISSING = "sign_missing"
    TIMESTAMP_MISSING = "timestamp_missing"

    # sessions and tokens (HTTP 401)
    TOKEN_EXPIRED = "token_expired"
    TOKEN_INVALID = "token_invalid"
    API_TOKEN_INVALID = "api_token_invalid"
    OPS_TOKEN_INVALID = "ops_token_invalid"
    AGENT_MISMATCH = "agent_mismatch"

    # the panel's websocket frames
    FRAME_INVALID = "frame_invalid"
    FRAME_NOT_JSON = "frame_not_json"
    FRAME_TOO_LARGE = "frame_too_large"
    FRAME_TOO_DEEP = "frame_too_deep"
    RATE_LIMITED = "rate_limited"

    # sends (HTTP 400/422) and the problems a payload can have
    BODY_NOT_JSON = "body_not_json"
    BODY_TOO_LARGE = "body_too_large"
    UNKNOWN_KIND = "unknown_kind"
    BAD_EVENT_ID = "bad_event_id"
    PAYLOAD_INVALID = "payload_invalid"
    ACTION_NOT_OFFERED = "action_not_offered"
    PAYLOAD_NOT_OBJECT = "payload_not_object"
    BAD_CHARACTERS = "bad_characters"
    BAD_DATE = "bad_date"
    CARD_EMPTY = "card_empty"
    CARD_TOO_LARGE = "card_too_large"
    CARD_TYPE_MISMATCH = "card_type_mismatch"
    FEE_NOT_FEN = "fee_not_fen"
    GOODS_COUNT_MISMATCH = "goods_count_mismatch"
    INVALID_VALUE = "invalid_value"
    LIST_STYLE_ONLY = "list_style_only"
    NEED_HTTP_URL = "need_http_url"
    NEED_MINI_PATH = "need_mini_path"
    NOT_AN_OPTION = "not_an_option"
    NOT_INTEGER = "not_integer"
    NOT_LIST = "not_list"
    NOT_NUMBER = "not_number"
    NOT_OBJECT = "not_object"
    NOT_TEXT = "not_text"
    ORDER_ONLY = "order_only"
    REQUIRED = "required"
    TICKET_EMPTY = "ticket_empty"
    TOO_BIG = "too_big"
    TOO_LONG = "too_long"
    TOO_MANY = "too_many"
    TOO_SMALL = "too_small"
    UNKNOWN_FIELD = "unknown_field"

    # the audit stream: a reused send id (HTTP 409), and the audit API's query (HTTP 400)
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    AUDIT_BAD_CURSOR = "audit_bad_cursor"
    AUDIT_BAD_TIME = "audit_bad_time"
    AUDIT_BAD_LIMIT = "audit_bad_limit"
    AUDIT_BAD_KIND = "audit_bad_kind"

    # what is away or not configured (HTTP 503)
    API_TOKEN_NOT_CONFIGURED = "api_token_not_configured"
    OPS_TOKEN_NOT_CONFIGURED = "ops_token_not_configured"
    AUDIT_SPOOL_FULL = "audit_spool_full"
    AUDIT_UNAVAILABLE = "audit_unavailable"
    REDIS_UNAVAILABLE = "redis_unavailable"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    WECOM_GATEWAY_BAD_ANSWER = "wecom_gateway_bad_answer"
    WECOM_GATEWAY_REFUSED = "wecom_gateway_refused"
    WECOM_GATEWAY_STATUS = "wecom_gateway_status"
    WECOM_GATEWAY_UNREACHABLE = "wecom_gateway_unreachable"

    # everything else
    DEVHOST_UNKNOWN_CUSTOMER = "devhost_unknown_customer"
    OPS_ENTRY_NOT_FOUND = "ops_entry_not_found"
    INTERNAL_ERROR = "internal_error"


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


class QueryTooLong(QueryError):
    """The query is longer than the documented limit (HTTP 414)."""

    status = 414


class SignError(PanelError):
    """The sign does not verify, or the timestamp is outside the window (HTTP 403)."""

    status = 403


class TokenError(PanelError):
    """A session or API token is missing, invalid or expired (HTTP 401)."""

    status = 401


class NotFound(PanelError):
    """Unknown surface or view (HTTP 404)."""

    status = 404


class Conflict(PanelError):
    """The request contradicts what was recorded before, e.g. a send id reused for other content (HTTP 409)."""

    status = 409


class NotOffered(PanelError):
    """A send of a kind this surface does not offer (PANEL_CARD_SURFACES, PANEL_TICKET_SURFACES) (HTTP 403)."""

    status = 403


class Unavailable(PanelError):
    """Redis and the upstream are both unavailable with nothing cached (HTTP 503)."""

    status = 503


class TooLarge(PanelError):
    """A request body beyond its limit (HTTP 413)."""

    status = 413


class PayloadError(PanelError):
    """A card or ticket payload breaks the rules of SPEC §5 (HTTP 422).

    `problems` lists every (field, code, params) found, so the panel can show them all at once.
    """

    status = 422

    def __init__(self, problems: list[tuple[str, str, dict[str, object]]]) -> None:
        first_field, first_code, first_params = problems[0]
        super().__init__(first_code, field=first_field, **first_params)
        self.problems = problems
