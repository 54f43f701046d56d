"""The built-in sample directory: a dozen customers from `web/sample/customers.json`.

It answers exactly like the enterprise API would, so every page works with no upstream at all.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..assets import sample_file
from .models import LOOKUP_NAMES, Customer


def load_customers(path: Path | None = None) -> list[Customer]:
    """The customers of a sample file (the shipped one by default): `{"customers": [...]}` in the shape of
    the customer API."""
    path = path or sample_file("customers.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    return [Customer.model_validate(item) for item in data["customers"]]


def _normalize(key: str, value: str) -> str:
    value = value.strip()
    return value.casefold() if key == "email" else value


class SampleDirectory:
    """Looks customers up by partnerId, phone, email (case-insensitive), uid or unionId."""

    def __init__(self, path: Path | None = None) -> None:
        self.customers = load_customers(path)
        self._index: dict[str, dict[str, Customer]] = {name: {} for name in LOOKUP_NAMES}
        for customer in self.customers:
            for name in LOOKUP_NAMES:
                value = str(getattr(customer, name))
                if value:
                    self._index[name].setdefault(_normalize(name, value), customer)

    async def lookup(self, key: str, value: str) -> Customer | None:
        if key not in self._index:
            raise ValueError(f"unknown lookup key {key!r}; expected one of {', '.join(LOOKUP_NAMES)}")
        return self._index[key].get(_normalize(key, value))

    async def close(self) -> None:
        return None
