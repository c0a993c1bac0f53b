"""The layout says what ARCHITECTURE.md says: HTTP at the edge, services below it that know no
HTTP server and take no whole configuration, and every import pointing down.

Read from the code's own imports (every `import` and `from … import`, lazy ones included).
"""

from __future__ import annotations

import ast
from pathlib import Path

RELAY = Path(__file__).parent.parent / "relay"

LAYERS = {
    "relay.codec": -1,  # JSON, below the model: a job's JSON is the model's own
    "relay": 0,  # the package itself: its version
    "relay.models": 0, "relay.errors": 0, "relay.limits": 0,
    "relay.config": 1, "relay.signing": 1, "relay.tokens": 1, "relay.runtime": 1,
    "relay.normalise": 2,
    "relay.store": 3,
    "relay.ingest": 4, "relay.fanout": 4, "relay.outbound": 4,
    "relay.polling": 5,
    "relay.http": 6,
    "relay.settings": 7, "relay.app": 7,
    "relay.sim": 8, "relay.client": 8, "relay.cli": 9, "relay.__main__": 10,
}
"""Each part of the relay and how high it sits: a module imports only from parts below its
own, or from its own part."""

SERVICES = ("relay.ingest", "relay.polling", "relay.store", "relay.fanout", "relay.outbound",
            "relay.normalise")
STARLETTE_ALLOWED = ("relay.http", "relay.app", "relay.runtime", "relay.sim")


def modules() -> dict[str, set[str]]:
    """Every module of the relay, with the modules it imports."""
    found = {}
    for path in sorted(RELAY.rglob("*.py")):
        parts = path.relative_to(RELAY.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = imported(ast.parse(path.read_text()), name, path.name == "__init__.py")
    return found


def imported(tree: ast.AST, name: str, package: bool) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(absolute(node, name, package))
    return names


def absolute(node: ast.ImportFrom, name: str, package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = name.split(".")
    base = base[:len(base) - node.level + (1 if package else 0)]
    return ".".join([*base, *([node.module] if node.module else [])])


def part(module: str) -> str:
    """The part of the relay (a key of LAYERS) a module belongs to."""
    for key in sorted(LAYERS, key=len, reverse=True):
        if module == key or (module.startswith(key + ".") and key != "relay"):
            return key
    raise AssertionError(f"{module} belongs to no part of the layout; add it to LAYERS")


MODULES = modules()


def test_every_module_belongs_to_a_part_of_the_layout():
    for module in MODULES:
        part(module)


def test_imports_point_down():
    upward = [f"{module} imports {target}"
              for module, targets in MODULES.items() for target in targets
              if target.startswith("relay") and part(target) != part(module)
              and LAYERS[part(target)] >= LAYERS[part(module)]]
    assert not upward


def test_services_know_no_http_server_and_no_whole_configuration():
    leaks = [f"{module} imports {target}"
             for module, targets in MODULES.items() if module.startswith(SERVICES)
             for target in targets
             if target.startswith(("starlette", "relay.settings", "relay.http", "relay.app"))]
    assert not leaks


def test_only_the_http_edge_imports_starlette():
    leaks = [module for module, targets in MODULES.items()
             if not module.startswith(STARLETTE_ALLOWED)
             and any(t.startswith("starlette") for t in targets)]
    assert not leaks


def test_fan_out_reads_the_store_and_nothing_of_ingest_or_polling():
    leaks = [f"{module} imports {target}"
             for module, targets in MODULES.items() if module.startswith("relay.fanout")
             for target in targets if target.startswith(("relay.ingest", "relay.polling"))]
    assert not leaks


def test_the_simulator_and_the_demo_are_outside_the_service():
    users = {m for m, targets in MODULES.items() if any(t.startswith("relay.sim") for t in targets)}
    assert users <= {m for m in MODULES if m.startswith("relay.sim")} | {"relay.cli"}
