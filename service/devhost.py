"""The Sobot host simulator at `/dev/host` (demo mode only)."""

from __future__ import annotations

from aiohttp import web


def setup_routes(app: web.Application) -> None:
    """Register `/dev/host` (only called when PANEL_DEMO=1)."""
