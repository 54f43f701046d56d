"""The operations dashboard over the audit stream."""

from __future__ import annotations

from aiohttp import web


def setup_routes(app: web.Application) -> None:
    """Register `/ops` routes."""
