"""Settings: every CONTRACT variable, demo defaults, and one clear line per bad value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from sobot_panel.protocol.surfaces import Surface
from sobot_panel.settings import DEMO_SECRET, DEMO_SYSNUM, Settings, describe_error

ROOT = Path(__file__).resolve().parent.parent


def test_demo_mode_fills_sysnum_and_secret() -> None:
    settings = Settings(_env_file=None, demo=True)  # type: ignore[call-arg]
    assert settings.sysnum == DEMO_SYSNUM
    assert settings.secret_value() == DEMO_SECRET


def test_contract_defaults() -> None:
    settings = Settings(_env_file=None, sysnum="1")  # type: ignore[call-arg]
    assert settings.sign_max_age == 300
    assert settings.redis_url is None
    assert settings.data_dir == Path("./.panel-data")
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.origin_patterns == ["https://*.sobot.com", "https://*.soboten.com"]
    assert settings.directory_url is None
    assert settings.directory_ttl == 60
    assert settings.card_format == "classic"
    assert settings.redis_prefix == "panel:"
    assert settings.demo is False
    assert settings.secret is None
    assert settings.card_surface_set == {Surface.WORKBENCH}
    assert settings.ticket_surface_set == {Surface.TICKET}
    assert settings.customer_lang == "zh"
    assert settings.ws_per_session == 4


def test_action_surfaces_and_customer_language() -> None:
    settings = Settings(_env_file=None, sysnum="1", card_surfaces="workbench,wecom", ticket_surfaces="ticket call",
                        customer_lang="en")  # type: ignore[call-arg]  # fmt: skip
    assert settings.card_surface_set == {Surface.WORKBENCH, Surface.WECOM}
    assert settings.ticket_surface_set == {Surface.TICKET, Surface.CALL}
    assert settings.customer_lang == "en"
    nowhere = Settings(_env_file=None, sysnum="1", card_surfaces="none")  # type: ignore[call-arg]
    assert nowhere.card_surface_set == frozenset()


def test_the_demo_keeps_its_session_key_across_restarts(tmp_path: Path) -> None:
    first = Settings(_env_file=None, demo=True, data_dir=tmp_path)  # type: ignore[call-arg]
    again = Settings(_env_file=None, demo=True, data_dir=tmp_path)  # type: ignore[call-arg]
    assert first.session_key is not None and again.session_key is not None
    assert first.session_key.get_secret_value() == again.session_key.get_secret_value()
    assert first.demo_key_path == tmp_path / "session.key" and not first.session_key_generated
    assert (tmp_path / "session.key").stat().st_mode & 0o077 == 0  # readable by its owner only
    # Outside the demo nothing is written: production sets PANEL_SESSION_KEY on every replica.
    production = Settings(_env_file=None, sysnum="1", data_dir=tmp_path / "prod")  # type: ignore[call-arg]
    assert production.session_key_generated and not (tmp_path / "prod").exists()


def test_environment_and_dotenv_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("PANEL_SYSNUM=from-dotenv\nPANEL_CARD_FORMAT=v6\n")
    monkeypatch.setenv("PANEL_SIGN_MAX_AGE", "120")
    settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert settings.sysnum == "from-dotenv"
    assert settings.card_format == "v6"
    assert settings.sign_max_age == 120


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        pytest.param({"sign_max_age": "soon"}, "PANEL_SIGN_MAX_AGE", id="max-age-not-int"),
        pytest.param({"sign_max_age": 0}, "PANEL_SIGN_MAX_AGE", id="max-age-zero"),
        pytest.param({"port": 70000}, "PANEL_PORT", id="port-range"),
        pytest.param({"redis_url": "http://x"}, "PANEL_REDIS_URL", id="redis-scheme"),
        pytest.param({"host_origins": "sobot.com"}, "PANEL_HOST_ORIGINS", id="origin-no-scheme"),
        pytest.param({"card_format": "v7"}, "PANEL_CARD_FORMAT", id="card-format"),
        pytest.param({"directory_url": "ftp://x"}, "PANEL_DIRECTORY_URL", id="directory-scheme"),
        pytest.param({"ticket_fields": "/nonexistent.json"}, "PANEL_TICKET_FIELDS", id="ticket-fields-missing"),
        pytest.param({"card_surfaces": "chat"}, "PANEL_CARD_SURFACES", id="card-surface-unknown"),
        pytest.param({"ticket_surfaces": " "}, "PANEL_TICKET_SURFACES", id="ticket-surfaces-empty"),
        pytest.param({"customer_lang": "fr"}, "PANEL_CUSTOMER_LANG", id="customer-lang"),
        pytest.param({"ws_per_session": 0}, "PANEL_WS_PER_SESSION", id="ws-per-session"),
    ],
)
def test_bad_value_names_the_variable(overrides: dict[str, object], variable: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, sysnum="1", **overrides)  # type: ignore[call-arg]
    line = describe_error(caught.value)
    assert line.startswith(variable + ":"), line
    assert "\n" not in line


def test_sysnum_required_outside_demo() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert "PANEL_SYSNUM" in describe_error(caught.value)


def test_bad_setting_stops_start_up_with_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PANEL_DEMO": "1", "PANEL_SIGN_MAX_AGE": "abc", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "sobot_panel", "serve"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("sobot-panel: bad setting: PANEL_SIGN_MAX_AGE:")
    assert "Traceback" not in done.stderr


# --- secrets ---------------------------------------------------------------------------------------


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def _refusal(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    with pytest.raises(ValidationError) as caught:
        _settings(monkeypatch, **env)
    line = describe_error(caught.value)
    assert "\n" not in line
    return line


@pytest.mark.parametrize(
    "variable", ["PANEL_SECRET", "PANEL_API_TOKEN", "PANEL_SESSION_KEY", "PANEL_SYSNUM", "PANEL_REDIS_URL"]
)
def test_a_variable_set_to_nothing_stops_start_up(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    env = {"PANEL_SYSNUM": "1", variable: "  "}
    assert _refusal(monkeypatch, **env).startswith(f"{variable}: set but empty")


def test_an_empty_secret_is_never_read_as_legacy_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """`PANEL_SECRET=` used to start quietly in legacy mode, accepting md5(sysNum+email) forever."""
    assert "PANEL_SECRET" in _refusal(monkeypatch, PANEL_SYSNUM="1", PANEL_SECRET="")


def test_secrets_from_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, text in {"secret": "s3cr3t\n", "api": "api-token", "redis": "redis://:pw@redis:6379/0\r\n"}.items():
        (tmp_path / name).write_text(text)
    files = {f"PANEL_{name}_FILE": str(tmp_path / path) for name, path in
             (("SECRET", "secret"), ("API_TOKEN", "api"), ("REDIS_URL", "redis"))}  # fmt: skip
    settings = _settings(monkeypatch, PANEL_SYSNUM="1", **files)
    assert settings.secret_value() == "s3cr3t"  # the trailing newline a text editor leaves is not part of it
    assert settings.api_token is not None and settings.api_token.get_secret_value() == "api-token"
    assert settings.redis_url == "redis://:pw@redis:6379/0"


@pytest.mark.parametrize(
    ("content", "both", "expected"),
    [(None, False, "PANEL_SECRET_FILE: cannot read"), ("\n", False, "PANEL_SECRET_FILE: "),
     ("s", True, "PANEL_SECRET and PANEL_SECRET_FILE are both set")],
    ids=["missing-file", "empty-file", "both"],
)  # fmt: skip
def test_bad_secret_files_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str | None, both: bool, expected: str
) -> None:
    path = tmp_path / "secret"
    if content is not None:
        path.write_text(content)
    env = {"PANEL_SYSNUM": "1", "PANEL_SECRET_FILE": str(path)} | ({"PANEL_SECRET": "x"} if both else {})
    line = _refusal(monkeypatch, **env)
    assert line.startswith(expected), line
    assert "s3cr3t" not in line


def test_previous_keys_need_their_successor(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "needs PANEL_SECRET" in _refusal(monkeypatch, PANEL_SYSNUM="1", PANEL_SECRET_PREVIOUS="old")
    monkeypatch.delenv("PANEL_SECRET_PREVIOUS")
    assert "needs PANEL_SESSION_KEY" in _refusal(monkeypatch, PANEL_SYSNUM="1", PANEL_SESSION_KEY_PREVIOUS="old")


def test_secrets_never_show_in_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    line = _refusal(monkeypatch, PANEL_SYSNUM="1", PANEL_SECRET="super-secret-key", PANEL_PORT="x")
    assert "super-secret-key" not in line
