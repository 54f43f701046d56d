"""The package as a user gets it: the built wheel, installed into a fresh virtualenv outside the checkout.

The wheel must carry the templates, static files, catalogs and sample data; `sobot-panel serve` must
work from any directory; a broken install must stop start-up with one clear line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers.net import free_port, wait_http

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=300, cwd=out,
    )  # fmt: skip
    (found,) = out.glob("sobot_panel-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv, far from the checkout, with the wheel and its dependencies installed by pip."""
    home = tmp_path_factory.mktemp("user")
    env_dir = home / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", str(wheel)], check=True, capture_output=True, timeout=500,
                   cwd=home)  # fmt: skip
    return env_dir


def _user_env(home: Path, **extra: str) -> dict[str, str]:
    env = {"PATH": f"{os.path.dirname(shutil.which('redis-server') or '/usr/bin')}:/usr/bin:/bin", "HOME": str(home)}
    return env | extra


def test_the_wheel_carries_the_package_and_its_assets(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"sobot_panel"}  # never a generic top-level name such as `service`
    for asset in ("web/templates/page.html", "web/static/panel.js", "web/static/panel.css", "web/i18n/panel.json",
                  "web/sample/customers.json", "web/sample/ticket-fields.toml", "py.typed",
                  "audit/record.schema.json"):  # fmt: skip
        assert f"sobot_panel/{asset}" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)


def test_version_from_both_entry_points(installed: Path, tmp_path: Path) -> None:
    for command in ([installed / "bin" / "sobot-panel", "--version"],
                    [installed / "bin" / "python", "-m", "sobot_panel", "--version"]):  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=_user_env(tmp_path),
                              timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "sobot-panel 0.1.0"


def test_the_installed_package_prints_the_audit_schema(installed: Path, tmp_path: Path) -> None:
    done = subprocess.run([installed / "bin" / "sobot-panel", "audit", "schema"], capture_output=True, text=True,
                          cwd=tmp_path, env=_user_env(tmp_path), timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["x-schema-version"] == 2


@pytest.fixture
def served(installed: Path, tmp_path: Path) -> Iterator[str]:
    """`sobot-panel serve` in demo mode, started in an empty directory with the installed console script."""
    port = free_port()
    env = _user_env(tmp_path, PANEL_DEMO="1", PANEL_PORT=str(port), PANEL_DATA_DIR=str(tmp_path / "data"))
    process = subprocess.Popen([installed / "bin" / "sobot-panel", "serve"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", timeout=30, process=process)
        yield base
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode(errors="replace")
        assert "Traceback" not in output, output


def _package_dir(python: Path, cwd: Path) -> Path:
    code = "import pathlib, sobot_panel; print(pathlib.Path(sobot_panel.__file__).parent)"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=cwd, env=_user_env(cwd), check=True)
    return Path(done.stdout.strip())


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def test_the_installed_package_serves_the_demo(installed: Path, served: str, tmp_path: Path) -> None:
    # the copy the wheel installed, not the checkout's
    assert _package_dir(installed / "bin" / "python", tmp_path).is_relative_to(installed)
    status, host = _get(f"{served}/dev/host")
    assert status == 200 and "panel-frame" in host
    status, signed = _get(f"{served}/dev/host/signed?surface=workbench&partnerId=C1001")
    assert status == 200
    status, page = _get(served + json.loads(signed)["url"])
    assert status == 200
    assert "张伟" in page and 'data-boot="' in page  # the sample customer, rendered from the packaged templates
    status, script = _get(f"{served}/static/panel.js")
    assert status == 200 and "postMessage" in script


def test_a_missing_asset_stops_start_up_with_one_line(installed: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(installed, broken, symlinks=True)
    python = broken / "bin" / "python"
    # a copied virtualenv still names its old home in its scripts: run the module with its own python
    (_package_dir(python, tmp_path) / "web" / "static" / "panel.js").unlink()
    env = _user_env(tmp_path, PANEL_DEMO="1", PANEL_PORT=str(free_port()), PANEL_DATA_DIR=str(tmp_path / "data"))
    started = time.monotonic()
    done = subprocess.run([python, "-m", "sobot_panel", "serve"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("sobot-panel: missing asset static/panel.js")
    assert time.monotonic() - started < 30


def test_every_subpackage_is_declared() -> None:
    """setuptools ships only the packages pyproject names: a new room left out would be missing from the wheel."""
    import tomllib

    declared = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"]
    )
    found = {"sobot_panel" + "".join(f".{part}" for part in init.parent.relative_to(ROOT / "service").parts)
             for init in (ROOT / "service").rglob("__init__.py")}  # fmt: skip
    assert found <= declared, found - declared
