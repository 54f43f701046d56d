"""`PANEL_TENANTS=/path/tenants.toml`: several Sobot companies served from one deployment (CONTRACT,
"Several Sobot companies from one deployment").

Each table `[tenants.NAME]` takes the single-company settings without the `PANEL_` prefix, in lower case.
A secret may be given inline or as `<name>_file`. Every problem is reported on its own line naming the
file, the tenant and the key, so an operator fixes them all in one go; a bad file stops start-up, and a
bad reload keeps the configuration in force.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from ..redis.keys import NAMESPACES
from ..settings import (
    DEFAULT_HOST_ORIGINS,
    Settings,
    existing_file,
    http_url,
    origin_list,
    surface_names,
    trustable_names,
)

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# Keys that hold a secret: each may be given as `<key>_file` instead (a Kubernetes Secret mounted as files).
SECRET_KEYS = ("secret", "secret_previous", "wecom_secret", "directory_token", "api_token", "ops_token")


class TenantsError(ValueError):
    """The tenants file cannot be used; `problems` has one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class CompanyConfig(BaseModel):
    """What differs between two Sobot companies served by one deployment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sysnum: str = Field(min_length=1)
    secret: SecretStr | None = None
    secret_previous: SecretStr | None = None
    wecom_secret: SecretStr | None = None
    host_origins: str = DEFAULT_HOST_ORIGINS
    directory_url: str | None = None
    directory_token: SecretStr | None = None
    directory_plugin: str | None = None
    ticket_fields: Path | None = None
    card_format: Literal["classic", "v6"] = "classic"
    card_surfaces: str = "workbench"
    ticket_surfaces: str = "ticket"
    api_token: SecretStr | None = None
    ops_token: SecretStr | None = None
    lang: Literal["zh", "en"] = "zh"
    trust_unsigned: str = ""

    _origins = field_validator("host_origins")(origin_list)
    _http = field_validator("directory_url")(http_url)
    _file = field_validator("ticket_fields")(existing_file)
    _surfaces = field_validator("card_surfaces", "ticket_surfaces")(surface_names)
    _trustable = field_validator("trust_unsigned")(trustable_names)


def single_company(settings: Settings) -> CompanyConfig | None:
    """The company the single-company variables describe (served at `/embed/...`), when PANEL_SYSNUM is set."""
    if not settings.sysnum:
        return None
    return CompanyConfig(
        sysnum=settings.sysnum,
        secret=settings.secret,
        secret_previous=settings.secret_previous,
        wecom_secret=settings.wecom_secret,
        host_origins=settings.host_origins,
        directory_url=settings.directory_url,
        directory_token=settings.directory_token,
        directory_plugin=settings.directory_plugin,
        ticket_fields=settings.ticket_fields,
        card_format=settings.card_format,
        card_surfaces=settings.card_surfaces or "none",
        ticket_surfaces=settings.ticket_surfaces or "none",
        api_token=settings.api_token,
        ops_token=settings.ops_token,
        trust_unsigned=settings.trust_unsigned,
    )


def _secret_files(name: str, table: dict[str, Any], base: Path, problems: list[str]) -> dict[str, Any]:
    """The table with every `<key>_file` replaced by the file's text (a trailing newline ignored)."""
    values = dict(table)
    for key in SECRET_KEYS:
        path = values.pop(f"{key}_file", None)
        if path is None:
            continue
        where = f"tenant {name}: {key}_file"
        if key in values:
            problems.append(f"tenant {name}: {key} and {key}_file are both set: give one")
            continue
        if not isinstance(path, str):
            problems.append(f"{where}: a path is expected")
            continue
        file = (base / path) if not Path(path).is_absolute() else Path(path)
        try:
            text = file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as error:
            problems.append(f"{where}: cannot read {file}: {getattr(error, 'strerror', None) or error}")
            continue
        if not text.strip():
            problems.append(f"{where}: {file} is empty")
            continue
        values[key] = text
    return values


def _describe(name: str, error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors(include_url=False):
        key = ".".join(str(part) for part in item["loc"]) or "(table)"
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "not a setting a tenant takes"
        lines.append(f"tenant {name}: {key}: {message}")
    return lines


def parse_tenants(document: dict[str, Any], base: Path) -> dict[str, CompanyConfig]:
    """The tenants of a parsed TOML document; TenantsError with every problem found."""
    problems: list[str] = []
    unknown = sorted(set(document) - {"tenants"})
    if unknown:
        problems.append(f"unknown top-level key(s) {', '.join(unknown)}: tenants are [tenants.NAME] tables")
    tables = document.get("tenants", {})
    if not isinstance(tables, dict) or not tables:
        raise TenantsError([*problems, "no [tenants.NAME] table: name at least one tenant"])
    tenants: dict[str, CompanyConfig] = {}
    for name, table in tables.items():
        if not NAME.match(name):
            problems.append(f"tenant {name!r}: a name is lower-case letters, digits and '-' (it becomes /t/{name}/)")
            continue
        if name in NAMESPACES:
            problems.append(f"tenant {name}: the name is one the service uses for its own keys; choose another")
            continue
        if not isinstance(table, dict):
            problems.append(f"tenant {name}: a table of settings is expected")
            continue
        empty = [key for key, value in table.items() if isinstance(value, str) and not value.strip()]
        problems.extend(f"tenant {name}: {key}: set but empty; give a value, or leave it out" for key in empty)
        values = _secret_files(name, {k: v for k, v in table.items() if k not in empty}, base, problems)
        try:
            tenants[name] = CompanyConfig.model_validate(values)
        except ValidationError as error:
            problems.extend(_describe(name, error))
    sysnums: dict[str, str] = {}
    for name, config in tenants.items():
        if config.sysnum in sysnums:
            problems.append(f"tenant {name}: sysnum: {config.sysnum} is also tenant {sysnums[config.sysnum]}'s")
        sysnums.setdefault(config.sysnum, name)
    if problems:
        raise TenantsError(problems)
    return tenants


def load_tenants(path: Path) -> dict[str, CompanyConfig]:
    """The tenants file at `path`; TenantsError (one line per problem, each naming the file) otherwise."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise TenantsError([f"{path}: cannot read: {error.strerror or error}"]) from None
    except tomllib.TOMLDecodeError as error:
        raise TenantsError([f"{path}: not TOML: {error}"]) from None
    try:
        return parse_tenants(document, path.parent)
    except TenantsError as error:
        raise TenantsError([f"{path}: {problem}" for problem in error.problems]) from None
