"""Where this replica is in its life: serving, or draining after SIGTERM (read by /readyz)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Lifecycle:
    """`draining` turns on at SIGTERM, before the listener closes: /readyz answers 503 from then on."""

    draining: bool = False
