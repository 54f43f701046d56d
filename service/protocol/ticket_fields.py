"""The ticket custom fields configured in Sobot (SPEC §5.1), and the rules a ticket's values obey.

`params` of a `createOrder` message must be keyed by exactly the custom field ids the Sobot admin
configured, so the enterprise lists those fields in `PANEL_TICKET_FIELDS` (a JSON or TOML file) and
the panel renders its "new ticket" form from them. Without a file, the vendor's example fields apply.

Pure logic apart from `load_ticket_fields`, which reads the one file at start-up.
"""

from __future__ import annotations

import json
import re
import tomllib
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from ..errors import Code

# (field, code, params): `code` is a message in web/i18n/cards.json; params fill its placeholders.
Problem = tuple[str, str, dict[str, object]]

FieldType = Literal["text", "textarea", "url", "number", "select", "date"]
FIELD_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
PREFILL = re.compile(r"^customer\.(?:name|phone|email|partnerId|level|attributes\.[^\s.][^\s]{0,63})$")
DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
NUMBER = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$")
# Lone surrogates cannot be encoded for the wire; C0 controls other than tab/newline never belong in a form.
BAD_CHARACTERS = re.compile(r"[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def has_bad_characters(text: str) -> bool:
    return BAD_CHARACTERS.search(text) is not None


_URI_KEEP = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789;,/?:@&=+$-_.!~*'()#[]")
_HEX = frozenset("0123456789abcdefABCDEF")


def encode_uri(url: str) -> str:
    """Percent-encode what may not appear in a URL (like JS `encodeURI`), keeping existing `%XX` escapes."""
    if _URI_KEEP.issuperset(url):
        return url  # the common case: nothing to encode (a set test in C, not a loop per character)
    out: list[str] = []
    for index, ch in enumerate(url):
        escape = ch == "%" and len(url) > index + 2 and set(url[index + 1 : index + 3]) <= _HEX
        if ch in _URI_KEEP or escape:
            out.append(ch)
        else:
            out.extend(f"%{byte:02X}" for byte in ch.encode("utf-8"))
    return "".join(out)


# `\s` is what str.isspace() calls whitespace, found by the regex engine instead of a loop per character.
_SPACE = re.compile(r"\s")


def is_http_url(text: str) -> bool:
    """An absolute http(s) URL with a host and no whitespace."""
    if not text or _SPACE.search(text) or has_bad_characters(text):
        return False
    try:
        parts = urlsplit(text)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class Option(_Frozen):
    """One choice of a select field: `value` is what Sobot stores, `label`/`label_en` what the agent reads."""

    value: str = Field(min_length=1, max_length=200)
    label: str = Field(min_length=1, max_length=200)
    label_en: str = Field(default="", max_length=200)


class TicketField(_Frozen):
    """A ticket custom field as configured in Sobot (its id is the key in `createOrder.params`).

    `prefill` names a customer attribute the form starts with: `customer.name`, `customer.phone`,
    `customer.email`, `customer.partnerId`, `customer.level` or `customer.attributes.<key>`.
    """

    id: str
    label: str = Field(min_length=1, max_length=200)
    label_en: str = Field(default="", max_length=200)
    type: FieldType = "text"
    required: bool = False
    options: list[Option] = []
    max_length: int = Field(default=500, ge=1, le=10_000)
    prefill: str = ""
    placeholder: str = Field(default="", max_length=200)

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not FIELD_ID.match(value):
            raise ValueError("must start with a letter or _ and hold only letters, digits, _ and - (64 at most)")
        return value

    @field_validator("prefill")
    @classmethod
    def _prefill_source(cls, value: str) -> str:
        if value and not PREFILL.match(value):
            raise ValueError(
                "must be customer.name, customer.phone, customer.email, customer.partnerId, customer.level "
                "or customer.attributes.<key>"
            )
        return value

    @model_validator(mode="after")
    def _options_fit_type(self) -> TicketField:
        if self.type == "select":
            if not self.options:
                raise ValueError("a select field needs options")
            values = [option.value for option in self.options]
            if len(set(values)) != len(values):
                raise ValueError("option values must be unique")
        elif self.options:
            raise ValueError(f"options only apply to select fields, not {self.type}")
        return self

    def check(self, raw: object) -> tuple[str, list[Problem]]:
        """The trimmed value to send ('' when empty) and the problems with it, per this field's rules."""
        if raw is None:
            raw = ""
        if not isinstance(raw, str):
            return "", [(self.id, Code.NOT_TEXT, {})]
        value = raw.strip()
        if not value:
            return "", [(self.id, Code.REQUIRED, {})] if self.required else []
        if has_bad_characters(value):
            return "", [(self.id, Code.BAD_CHARACTERS, {})]
        if self.type == "url":
            # Same reading of SPEC §5.3 as the cards: keep the link's http(s) start, encode only what is unsafe.
            value = encode_uri(value)
        if len(value) > self.max_length:
            return "", [(self.id, Code.TOO_LONG, {"max": self.max_length})]
        if self.type == "url" and not is_http_url(value):
            return "", [(self.id, Code.NEED_HTTP_URL, {})]
        if self.type == "number" and not _is_decimal(value):
            return "", [(self.id, Code.NOT_NUMBER, {})]
        if self.type == "date" and not _is_date(value):
            return "", [(self.id, Code.BAD_DATE, {})]
        if self.type == "select" and value not in {option.value for option in self.options}:
            return "", [(self.id, Code.NOT_AN_OPTION, {})]
        return value, []


def _is_decimal(value: str) -> bool:
    if not NUMBER.match(value) or len(value) > 64:
        return False
    try:
        return Decimal(value).is_finite()
    except InvalidOperation:
        return False


def _is_date(value: str) -> bool:
    if not DATE.match(value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def clean_ticket(data: dict[str, Any], fields: list[TicketField]) -> tuple[dict[str, str], list[Problem]]:
    """`createOrder.params` from a form's `{field id: value}`, plus every problem found.

    The result holds exactly the configured field ids that have a value, in configuration order, each
    value a trimmed string; empty optional fields are omitted rather than sent blank (SPEC §5.1: the keys
    are the configured ids; leaving one out leaves that Sobot field empty). Ids that are not configured
    are refused (`unknown_field`) instead of dropped, so a stale form never loses what the agent typed.
    """
    problems: list[Problem] = []
    known = {field.id for field in fields}
    problems.extend((str(key)[:64] or '""', Code.UNKNOWN_FIELD, {}) for key in data if key not in known)
    params: dict[str, str] = {}
    for field in fields:
        value, found = field.check(data.get(field.id))
        problems.extend(found)
        if value and not found:
            params[field.id] = value
    if not params and not problems:
        problems.append(("data", Code.TICKET_EMPTY, {}))
    return params, problems


# The vendor's example fields (SPEC §5.1), used when PANEL_TICKET_FIELDS is unset.
DEFAULT_TICKET_FIELDS: tuple[TicketField, ...] = (
    TicketField(id="card_title", label="标题", label_en="Title", type="text", required=True, max_length=200),
    TicketField(id="card_url", label="链接", label_en="Link", type="url", max_length=2000),
    TicketField(id="card_desc", label="描述", label_en="Description", type="textarea", max_length=2000),
    TicketField(id="card_note", label="备注", label_en="Note", type="text", max_length=500),
    TicketField(id="card_picture", label="图片链接", label_en="Picture URL", type="url", max_length=2000),
)

_FIELD_LIST = TypeAdapter(list[TicketField])


def parse_ticket_fields(document: object, source: str) -> list[TicketField]:
    """Fields from a parsed JSON/TOML document: a list, or an object with one key `fields`.

    Raises ValueError with one line naming `source`, the field and the problem.
    """
    if isinstance(document, dict):
        extra = sorted(str(key) for key in document if key != "fields")
        if extra:
            raise ValueError(f"ticket fields file {source}: unexpected key {extra[0]!r} (expected only 'fields')")
        document = document.get("fields")
    if not isinstance(document, list):
        raise ValueError(f"ticket fields file {source}: expected a list of fields, or 'fields' holding one")
    if not document:
        raise ValueError(f"ticket fields file {source}: lists no fields")
    try:
        fields = _FIELD_LIST.validate_python(document)
    except ValidationError as error:
        raise ValueError(f"ticket fields file {source}: {_describe(error)}") from None
    seen: set[str] = set()
    for index, field in enumerate(fields):
        if field.id in seen:
            raise ValueError(f"ticket fields file {source}: fields[{index}].id: {field.id!r} is used twice")
        seen.add(field.id)
    return fields


def load_ticket_fields(path: Path | None) -> list[TicketField]:
    """The configured ticket fields: `path` (.json or .toml) when given, else the built-in example."""
    if path is None:
        return list(DEFAULT_TICKET_FIELDS)
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
        if suffix == ".json":
            document: object = json.loads(text)
        elif suffix == ".toml":
            document = tomllib.loads(text)
        else:
            raise ValueError(f"ticket fields file {path.name}: must end in .json or .toml")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"ticket fields file {path.name}: cannot read it ({error})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"ticket fields file {path.name}: not valid JSON ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"ticket fields file {path.name}: not valid TOML ({error})") from None
    return parse_ticket_fields(document, path.name)


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        where = "fields" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts).replace("\n", " ")
