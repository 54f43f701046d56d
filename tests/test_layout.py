"""The package's shape, read from its own imports: no import cycle, pure rules at the bottom, and no module
reaching back into a handler module for logic."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "service"
# Modules that answer HTTP or websocket requests: only the wiring (app.py) may import them.
HANDLERS = {"panel.handlers", "live.endpoint", "ops.dashboard", "devhost", "health", "middleware", "audit.http"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> modules of the package it imports at run time (imports under TYPE_CHECKING left out)."""
    modules = {_module(path): path for path in SOURCE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        guarded = [
            node for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        ]
        skipped = {id(inner) for node in guarded for inner in ast.walk(node)}
        found: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skipped or not isinstance(node, ast.ImportFrom) or node.level == 0:
                continue
            base = package[: len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            for alias in node.names:
                candidate = ".".join([*base, alias.name])
                found.add(candidate if candidate in modules else ".".join(base))
        graph[name] = {target for target in found if target in modules and target != name}
    return graph


GRAPH = _imports()


def test_the_package_is_found_and_read() -> None:
    assert {"app", "panel.core", "live.hub", "audit.producer", "ops.dashboard", "protocol.signing"} <= set(GRAPH)
    assert {"panel.handlers", "live.endpoint", "panel.core"} <= GRAPH["app"]  # edges are read, not just nodes
    assert {"protocol.signing", "directory.cache"} <= GRAPH["panel.core"]


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(GRAPH[node]):
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)


def test_only_the_wiring_imports_handler_modules() -> None:
    for module, targets in GRAPH.items():
        if module in ("app", ""):
            continue
        assert not (targets & HANDLERS) - {module}, f"{module} imports handler module(s) {targets & HANDLERS}"


@pytest.mark.parametrize("module", sorted(name for name in GRAPH if name.startswith("protocol.")))
def test_pure_rules_import_nothing_with_io(module: str) -> None:
    allowed = {"errors", "clock", "protocol"} | {name for name in GRAPH if name.startswith("protocol.")}
    assert GRAPH[module] <= allowed, f"{module} imports {GRAPH[module] - allowed}"


def test_domain_modules_do_not_read_the_application() -> None:
    """Only handlers and the wiring look things up in `app[...]`; the rest is handed what it needs."""
    readers = {name for name, targets in GRAPH.items() if "appkeys" in targets}
    assert readers <= HANDLERS | {"app", "panel.pages", "tenants.routing"}, readers - HANDLERS
