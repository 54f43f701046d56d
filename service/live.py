"""Live panels: the `/ws` endpoint (filled in by the live-panels work)."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Register the live hub's resources and the `/ws` route."""
