"""The companies this deployment serves, by name ("" for the single-company settings).

`reconcile` turns a fresh reading of the tenants file into the live set: companies that are new are
opened, those whose settings changed are reopened and swapped in (their open panels keep their sockets and
are served by the new one from their next push), those that are gone are closed. Nothing of the old set is
touched until every new company has opened, so a reload that fails keeps the old configuration whole.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from .company import Company, Shared, open_company
from .config import CompanyConfig

log = logging.getLogger(__name__)


class Companies:
    def __init__(self) -> None:
        self._by_name: dict[str, Company] = {}

    def get(self, name: str) -> Company | None:
        return self._by_name.get(name)

    @property
    def default(self) -> Company:
        """The company of the single-company settings (served at `/embed/...`); LookupError when none is."""
        company = self._by_name.get("")
        if company is None:
            raise LookupError("no single company: PANEL_SYSNUM is not set")
        return company

    def __iter__(self) -> Iterator[Company]:
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)

    @property
    def names(self) -> list[str]:
        return sorted(self._by_name)

    def put(self, company: Company) -> None:
        self._by_name[company.name] = company

    def pop(self, name: str) -> Company | None:
        return self._by_name.pop(name, None)


@dataclass
class Changes:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"{label} {', '.join(names)}" for label, names in
                 (("added", self.added), ("changed", self.changed), ("removed", self.removed)) if names]  # fmt: skip
        return "; ".join(parts) or "nothing changed"


async def reconcile(
    companies: Companies,
    wanted: dict[str, CompanyConfig],
    shared: Shared,
    *,
    attach: Callable[[Company], None],
    detach: Callable[[str], Awaitable[None]],
) -> Changes:
    """Make `companies` serve exactly `wanted` (name -> settings); `attach`/`detach` tell the live hub."""
    changes = Changes()
    opened: list[Company] = []
    try:
        for name, config in wanted.items():
            current = companies.get(name)
            if current is not None and current.config == config:
                continue
            opened.append(await open_company(name, config, shared))
            (changes.changed if current is not None else changes.added).append(name)
    except BaseException:
        for company in opened:  # a reload that fails leaves the running set as it was
            await company.close()
        raise
    for company in opened:
        old = companies.get(company.name)
        companies.put(company)
        attach(company)
        if old is not None:
            await old.close()
    for company in list(companies):
        if company.name not in wanted:
            changes.removed.append(company.name)
            companies.pop(company.name)
            await detach(company.name)
            await company.close()
    return changes
