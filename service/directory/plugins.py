"""Choose the directory: a named plugin, the enterprise's HTTP API, or the built-in sample.

A plugin is an installed package that declares, in its pyproject.toml,

    [project.entry-points."sobot_panel.directories"]
    crm = "acme_panel:make_directory"

where `make_directory(settings) -> Directory`; `PANEL_DIRECTORY_PLUGIN=crm` selects it.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from .http import HttpDirectory, OnCall
from .models import Directory
from .sample import SampleDirectory

if TYPE_CHECKING:
    from ..settings import Settings

ENTRY_POINT_GROUP = "sobot_panel.directories"


def load_directory(
    *,
    plugin: str | None,
    url: str | None,
    token: str | None,
    timeout_s: float,
    settings: Settings,
    on_call: OnCall | None = None,
) -> Directory:
    """The directory a company asks for: its plugin, then its customer API's URL, then the sample.

    A plugin's factory is handed the deployment's settings (`make_directory(settings)`)."""
    if plugin:
        return _load_plugin(plugin, settings)
    if url:
        return HttpDirectory(url, token, timeout_s, on_call)
    return SampleDirectory()


def _load_plugin(name: str, settings: Settings) -> Directory:
    found = {point.name: point for point in entry_points(group=ENTRY_POINT_GROUP)}
    if name not in found:
        available = ", ".join(sorted(found)) or "none installed"
        raise ValueError(
            f"PANEL_DIRECTORY_PLUGIN: no directory plugin {name!r} in {ENTRY_POINT_GROUP} (available: {available})"
        )
    factory = found[name].load()
    directory = factory(settings)
    if not isinstance(directory, Directory):
        kind = type(directory).__name__
        raise ValueError(f"PANEL_DIRECTORY_PLUGIN: plugin {name!r} returned a {kind}, not a Directory")
    return directory
