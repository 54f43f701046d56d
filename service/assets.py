"""Every file under `web/` (templates, static files, message catalogs, sample data), found in one place.

The folder ships inside the package as `sobot_panel.web`, so an installed wheel, an editable checkout and
the container image all find it the same way, through `importlib.resources`. `check()` runs before the
service starts: a missing asset stops start-up with one line naming it, instead of a panel that renders
raw message codes or a static route that fails at the first request.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

# What a panel cannot be served without; each must exist (a folder must hold at least one such file).
REQUIRED = (
    "templates/page.html",
    "templates/error.html",
    "static/panel.js",
    "static/panel-patch.js",
    "static/panel-send.js",
    "static/panel-origin.js",
    "static/panel.css",
    "i18n/panel.json",
    "sample/customers.json",
)


class AssetError(RuntimeError):
    """A file the service needs is not where the package says it is (a broken install)."""


def web_dir() -> Path:
    """The `web/` folder as a real directory (aiohttp serves static files and Jinja2 loads templates from it)."""
    root = files("sobot_panel.web")
    if not isinstance(root, Path):
        raise AssetError(f"sobot_panel.web is not a folder on disk ({root!r}); install the wheel unpacked")
    return root


def templates_dir() -> Path:
    return web_dir() / "templates"


def static_dir() -> Path:
    return web_dir() / "static"


def catalog_dir() -> Path:
    return web_dir() / "i18n"


def sample_file(name: str) -> Path:
    return web_dir() / "sample" / name


def check() -> Path:
    """The web folder, once every required asset is there; else AssetError naming the first one missing."""
    root = web_dir()
    for name in REQUIRED:
        if not (root / name).is_file():
            raise AssetError(f"missing asset {name} under {root}: the package is incomplete, reinstall sobot-panel")
    return root
