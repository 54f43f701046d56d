"""Settings: every CONTRACT variable, demo defaults, and one clear line per bad value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
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
