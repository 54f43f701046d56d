"""Every setting of the service, read from `PANEL_*` environment variables (and an optional `.env`).

This is the only module that reads the environment. A bad value stops start-up with one line that
names the variable (see `describe_error`).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from .protocol.signing import SignPolicy
from .protocol.surfaces import Surface
from .protocol.trust import TRUSTABLE
from .redis import parse_redis_url

DEMO_SYSNUM = "demo"
DEMO_SECRET = "demo-secret"
DEFAULT_HOST_ORIGINS = "https://*.sobot.com https://*.soboten.com"
# Settings that hold a secret: each may be given as PANEL_<NAME>_FILE instead (CONTRACT, "Settings").
SECRET_FIELDS = ("secret", "secret_previous", "wecom_secret", "wecom_temp_id", "api_token", "ops_token",
                 "session_key", "session_key_previous", "directory_token", "redis_url")  # fmt: skip
# Settings where "set but empty" (`PANEL_SECRET=`) is a mistake, never "unset".
NEEDS_A_VALUE = ("sysnum", *SECRET_FIELDS, "wecom_gateway", "redis_tls_ca", "redis_prefix", "data_dir", "host",
                 "public_url", "host_origins", "directory_url", "directory_plugin", "ticket_fields",
                 "tenants")  # fmt: skip
SESSION_KEY_FILE = "session.key"


def demo_session_key(data_dir: Path) -> str | None:
    """The demo's session key, kept in `data_dir/session.key` (made on first use, readable by its owner
    only); None when the directory cannot hold it (the caller then makes a per-process key)."""
    path = data_dir / SESSION_KEY_FILE
    try:
        kept = path.read_text(encoding="ascii").strip()
        if len(kept) >= 32:
            return kept
    except (OSError, UnicodeDecodeError):
        pass
    key = secrets.token_urlsafe(32)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as file:
            file.write(key + "\n")
        os.replace(partial, path)
    except OSError:
        return None
    return key


def origin_list(value: str) -> str:
    """Host origins (space separated) like `https://*.sobot.com`: scheme and host, no path."""
    if not value.split():
        raise ValueError("names no origin")
    for origin in value.split():
        scheme, sep, rest = origin.partition("://")
        if not sep or scheme not in ("http", "https") or not rest or "/" in rest:
            raise ValueError(f"{origin!r} is not an origin like https://*.sobot.com")
    return value


def trustable_names(value: str) -> str:
    """The unsigned keys chosen to be trusted (space or comma separated), checked and normalised."""
    names = value.replace(",", " ").split()
    unknown = [name for name in names if name not in TRUSTABLE]
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: only {' and '.join(TRUSTABLE)} can be trusted unsigned")
    return " ".join(names)


def surface_names(value: str) -> str:
    """A list of surfaces (space or comma separated; `none` for none), checked and normalised."""
    names = value.replace(",", " ").split()
    if names == ["none"]:
        return ""
    if not names:
        raise ValueError("is empty: name surfaces (e.g. workbench), or none")
    known = [surface.value for surface in Surface]
    for name in names:
        if name not in known:
            raise ValueError(f"{name!r} is not a surface; use {', '.join(known)} (or none)")
    return " ".join(names)


def http_url(value: str | None) -> str | None:
    """An http(s) base URL, without its trailing slash."""
    if value and not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value.rstrip("/") if value else None


def existing_file(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError(f"no such file: {value}")
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PANEL_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    sysnum: str = ""
    secret: SecretStr | None = None
    # Sobot's previous security key, accepted beside PANEL_SECRET while agents' pages still carry it
    secret_previous: SecretStr | None = None
    wecom_secret: SecretStr | None = None
    wecom_gateway: str | None = None
    wecom_temp_id: SecretStr | None = None
    sign_max_age: int = Field(default=300, ge=1, le=86_400)

    redis_url: str | None = None
    # Redis Cluster behind a redis:// or rediss:// node URL (a redis+cluster:// URL says so by itself)
    redis_cluster: bool = False
    # PEM CA bundle that verifies a TLS Redis's certificate, unless the URL names one (?ssl_ca_certs=)
    redis_tls_ca: Path | None = None
    redis_prefix: str = "panel:"
    data_dir: Path = Path("./.panel-data")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65_535)
    public_url: str | None = None
    host_origins: str = DEFAULT_HOST_ORIGINS

    directory_url: str | None = None
    directory_token: SecretStr | None = None
    directory_plugin: str | None = None
    directory_ttl: int = Field(default=60, ge=1)
    directory_negative_ttl: int = Field(default=10, ge=1)
    directory_timeout: float = Field(default=3.0, gt=0)
    # calls in flight to one company's customer API; past it a lookup waits for a slot at most
    # PANEL_DIRECTORY_TIMEOUT, then fails (the cache then answers with a stale copy when it has one)
    directory_concurrency: int = Field(default=64, ge=1)
    local_cache_ttl: float = Field(default=3.0, ge=0)
    local_cache_size: int = Field(default=2048, ge=0)

    ticket_fields: Path | None = None
    card_format: Literal["classic", "v6"] = "classic"
    # Where the panel offers what Sobot carries out (SPEC §5): cards in the chat workbench, createOrder in
    # the ticket center. Elsewhere the views are read-only and say where the action lives.
    card_surfaces: str = "workbench"
    ticket_surfaces: str = "ticket"
    # The language of what the customer reads (the V6 card's customCardStatus), whatever the agent's UI.
    customer_lang: Literal["zh", "en"] = "zh"

    audit_maxlen: int | None = Field(default=1_000_000, ge=1)
    audit_max_age: int | None = Field(default=None, ge=60)
    # bytes of audit records kept on local disk while Redis is away (<data_dir>/spool); 0 = no spool
    spool_max_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    audit_claim_idle_ms: int = Field(default=60_000, ge=1)
    audit_dead_after: int = Field(default=5, ge=1)
    # Whether this replica runs the dashboard's consumer (group `ops`). `off` keeps the counting off the
    # replicas that take sends; some other deployment of the same service then runs it with `on`.
    ops_consumer: Literal["on", "off"] = "on"

    api_token: SecretStr | None = None
    ops_token: SecretStr | None = None
    session_key: SecretStr | None = None
    # the key tokens were issued with before PANEL_SESSION_KEY changed: still read, never issued with
    session_key_previous: SecretStr | None = None
    session_ttl: int = Field(default=3600, ge=60)
    # a session's absolute end: renewals stop this long after Sobot's sign was last verified for it
    session_max_age: int = Field(default=12 * 3600, ge=60)

    # `PANEL_<NAME>_FILE`: the secret read from a file (Docker and Kubernetes secrets), see `_secret_files`
    secret_file: Path | None = None
    secret_previous_file: Path | None = None
    wecom_secret_file: Path | None = None
    wecom_temp_id_file: Path | None = None
    api_token_file: Path | None = None
    ops_token_file: Path | None = None
    session_key_file: Path | None = None
    session_key_previous_file: Path | None = None
    directory_token_file: Path | None = None
    redis_url_file: Path | None = None

    # Unsigned customer keys an operator chooses to trust in secret mode (space or comma separated, from
    # partnerId and uid): off by default, see "Security" in the README.
    trust_unsigned: str = ""
    # sockets one panel session may hold open on one replica (a panel needs one; a reconnect may briefly
    # overlap a socket the server has not yet seen die). Counted per session, never per IP address:
    # a call center's agents share one NAT address.
    ws_per_session: int = Field(default=4, ge=1, le=64)
    # panels re-rendered at once when the pub/sub connection comes back (every panel of the replica is
    # resynchronised then): enough to overlap Redis round trips, few enough that pages and relays still run
    resync_concurrency: int = Field(default=16, ge=1, le=1024)

    # several Sobot companies from one deployment: a TOML file of [tenants.NAME] tables (README, "Many companies")
    tenants: Path | None = None

    demo: bool = False
    _session_key_generated: bool = PrivateAttr(default=False)
    _demo_key_path: Path | None = PrivateAttr(default=None)
    log_format: Literal["text", "json"] = "text"

    # --- operating at scale: audit retention and idempotency, the spool's place, logs, metrics ----------
    # Entries kept past any consumer group's lag: beyond this length even unacknowledged entries are
    # dropped (logged and counted). Unset: 10 x PANEL_AUDIT_MAXLEN.
    audit_hard_maxlen: int | None = Field(default=None, ge=1)
    # Seconds a send's idempotency key is kept: a retry within it is answered, never recorded twice.
    audit_dedupe_ttl: int = Field(default=86_400, ge=60)
    # Seconds between two retention passes (one replica trims at a time).
    audit_trim_interval: float = Field(default=5.0, gt=0, le=3_600)
    # Where the audit spool lives; a volume that outlives the pod keeps spooled records (deploy/README.md).
    spool_dir: Path | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Serve /metrics on this port only (not on PANEL_PORT, so an ingress never exposes it).
    metrics_port: int | None = Field(default=None, ge=1, le=65_535)

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_any_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _given_values(cls, data: Any) -> Any:
        """What the environment gave, before any field is read: `PANEL_X_FILE=/run/secrets/x` gives PANEL_X
        the file's text (a trailing newline ignored), and a variable set to nothing is a mistake, not "unset"."""
        if not isinstance(data, dict):
            return data
        for name in SECRET_FIELDS:
            path = data.get(f"{name}_file")
            if path is None:
                continue
            variable = f"PANEL_{name.upper()}"
            if data.get(name) is not None:
                raise ValueError(f"{variable} and {variable}_FILE are both set: give one")
            try:
                text = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as error:
                raise ValueError(f"{variable}_FILE: cannot read {path}: {getattr(error, 'strerror', error)}") from None
            if not text.strip():
                raise ValueError(f"{variable}_FILE: {path} is empty")
            data = {**data, name: text}
        empty = [f"PANEL_{name.upper()}" for name in NEEDS_A_VALUE if _is_blank(data.get(name))]
        if empty:
            raise ValueError(f"{', '.join(empty)}: set but empty; give a value, or unset it")
        return data

    # The checks a tenant's table shares (tenants/config.py): written once, below the class.
    _origins = field_validator("host_origins")(origin_list)
    _trustable = field_validator("trust_unsigned")(trustable_names)
    _surfaces = field_validator("card_surfaces", "ticket_surfaces")(surface_names)

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value:
            parse_redis_url(value)  # a ValueError names what is wrong
        return value or None

    @field_validator("redis_cluster")
    @classmethod
    def _redis_cluster_url(cls, value: bool, info: ValidationInfo) -> bool:
        if not value or "redis_url" not in info.data:  # off, or PANEL_REDIS_URL is invalid (and reported)
            return value
        url = info.data["redis_url"]
        if url is None:
            raise ValueError("needs PANEL_REDIS_URL (the embedded redis-server is a single server)")
        parse_redis_url(url, cluster=True)
        return value

    @field_validator("redis_tls_ca")
    @classmethod
    def _redis_tls_ca(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        if not value.is_file():
            raise ValueError(f"no such file: {value}")
        url = info.data.get("redis_url") or ""
        if "redis_url" in info.data and not url.lower().startswith("rediss"):
            raise ValueError("is set but PANEL_REDIS_URL does not use TLS (rediss://...)")
        return value

    _http = field_validator("directory_url", "wecom_gateway", "public_url")(http_url)
    _files = field_validator("tenants", "ticket_fields")(existing_file)

    @model_validator(mode="after")
    def _demo_defaults(self) -> Settings:
        if self.demo:
            # frozen model: fill demo defaults through object.__setattr__ once, at validation time
            if not self.sysnum:
                object.__setattr__(self, "sysnum", DEMO_SYSNUM)
            if self.secret is None:
                object.__setattr__(self, "secret", SecretStr(DEMO_SECRET))
        if not self.sysnum and self.tenants is None:
            raise ValueError(
                "PANEL_SYSNUM is required (your Sobot company number), or set PANEL_TENANTS or PANEL_DEMO=1"
            )
        if self.secret_previous is not None and self.secret is None:
            raise ValueError("PANEL_SECRET_PREVIOUS: needs PANEL_SECRET (the key that replaced it)")
        if self.session_key_previous is not None and self.session_key is None:
            raise ValueError("PANEL_SESSION_KEY_PREVIOUS: needs PANEL_SESSION_KEY (the key that replaced it)")
        if self.session_key is None and self.demo:
            # The demo keeps its key in its data directory, so `make run` survives a restart: open panels
            # reconnect with the tokens they hold instead of ending their sessions.
            kept = demo_session_key(self.data_dir)
            if kept is not None:
                object.__setattr__(self, "session_key", SecretStr(kept))
                self._demo_key_path = self.data_dir / SESSION_KEY_FILE
        if self.session_key is None:
            object.__setattr__(self, "session_key", SecretStr(secrets.token_urlsafe(32)))
            self._session_key_generated = True
        return self

    # --- derived values -------------------------------------------------------------------------

    @property
    def origin_patterns(self) -> list[str]:
        return self.host_origins.split()

    @property
    def trusted_unsigned(self) -> frozenset[str]:
        return frozenset(self.trust_unsigned.split())

    @property
    def session_key_generated(self) -> bool:
        return self._session_key_generated

    @property
    def demo_key_path(self) -> Path | None:
        """Demo mode without PANEL_SESSION_KEY: the file the key is kept in."""
        return self._demo_key_path

    @property
    def card_surface_set(self) -> frozenset[Surface]:
        return frozenset(Surface(name) for name in self.card_surfaces.split())

    @property
    def ticket_surface_set(self) -> frozenset[Surface]:
        return frozenset(Surface(name) for name in self.ticket_surfaces.split())

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def audit_hard_limit(self) -> int | None:
        """The length past which even unacknowledged audit entries are dropped (CONTRACT: 10 x the length)."""
        if self.audit_hard_maxlen is not None:
            return self.audit_hard_maxlen
        return self.audit_maxlen * 10 if self.audit_maxlen else None

    @property
    def spool_path(self) -> Path:
        return self.spool_dir if self.spool_dir is not None else self.data_dir / "spool"

    def secret_value(self) -> str | None:
        return self.secret.get_secret_value() if self.secret else None

    def wecom_secret_value(self) -> str | None:
        return self.wecom_secret.get_secret_value() if self.wecom_secret else None

    def sign_policy(self) -> SignPolicy:
        """The sign rules these settings configure (SPEC §3)."""
        return SignPolicy(
            sys_num=self.sysnum,
            secret=self.secret_value(),
            wecom_secret=self.wecom_secret_value(),
            max_age_s=self.sign_max_age,
            previous_secret=self.secret_previous.get_secret_value() if self.secret_previous else None,
        )

    def session_keys(self) -> tuple[bytes, list[bytes]]:
        """The key session tokens are issued with, and the previous one they may still be read with."""
        assert self.session_key is not None  # filled in by validation
        previous = [self.session_key_previous.get_secret_value().encode()] if self.session_key_previous else []
        return self.session_key.get_secret_value().encode(), previous


def _is_blank(value: Any) -> bool:
    return (
        isinstance(value, str | SecretStr)
        and not str(value.get_secret_value() if isinstance(value, SecretStr) else value).strip()
    )


def describe_error(error: ValidationError) -> str:
    """One line per problem, each naming the environment variable, for start-up failures."""
    lines = []
    for item in error.errors():
        location = [str(part) for part in item["loc"]]
        message = str(item["msg"]).removeprefix("Value error, ")
        if location:
            lines.append(f"PANEL_{location[0].upper()}: {message}")
        else:
            lines.append(message)
    return "; ".join(lines)


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
