"""The package's import direction (README, "The package"): each import points down.

    cli -> app, devtools -> pipeline, ops (never each other)
        -> container, chunking, judge, stores, kafka, telemetry -> the base modules

Read from the source with `ast`, every import counts: at module level, under
TYPE_CHECKING, or inside a function (where none of the package's own may hide).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "replicator"

BASE = {
    "replicator",
    "config",
    "config_checks",
    "client_properties",
    "errors",
    "logs",
    "keys",
    "schemas",
    "model",
}
MIDDLE = {"container", "chunking", "judge", "stores", "kafka", "telemetry"}
RANKS = {
    **dict.fromkeys(BASE, 0),
    **dict.fromkeys(MIDDLE, 1),
    "pipeline": 2,
    "ops": 2,
    "app": 3,
    "devtools": 3,
    "cli": 4,
    "__main__": 5,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def group(module: str) -> str:
    """The layer group of a module: its first name under `replicator` (the package itself
    for `replicator`)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def against(module: str, target: str) -> bool:
    """True when `module` importing `target` goes against the direction: up a layer, or
    across between pipeline and ops, or between app and devtools."""
    mine, theirs = group(module), group(target)
    if mine == theirs:
        return False
    return RANKS[theirs] > RANKS[mine] or (RANKS[theirs] == RANKS[mine] and RANKS[mine] >= 2)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module of the package, inside a function) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((a.name, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and (child.module or "").startswith(
                "replicator"
            ):
                # `from replicator.x import y`: y may be a module of x
                for alias in child.names:
                    candidate = f"{child.module}.{alias.name}"
                    target = candidate if candidate in MODULES else str(child.module)
                    found.append((target, in_function))
            visit(child, inner)

    visit(tree, False)
    return [(m, f) for m, f in found if m == "replicator" or m.startswith("replicator.")]


SOURCES = sorted(PACKAGE.rglob("*.py"))
MODULES = {module_name(p) for p in SOURCES} | {"replicator.judge._fastcheck"}
GRAPH = {module_name(p): imports(p) for p in SOURCES}


def test_every_module_has_a_layer() -> None:
    assert {group(m) for m in MODULES} <= RANKS.keys()


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module: str) -> None:
    wrong = [target for target, _in_function in GRAPH[module] if against(module, target)]
    assert not wrong, f"{module} imports {wrong} against the direction"


def test_nothing_below_the_cli_imports_devtools() -> None:
    offenders = sorted(
        module
        for module, targets in GRAPH.items()
        if group(module) not in {"cli", "devtools", "__main__"}
        and any(group(t) == "devtools" for t, _ in targets)
    )
    assert offenders == []


def test_no_package_import_hides_in_a_function() -> None:
    hidden = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() for t, inner in targets if inner)
    assert hidden == []


def test_no_import_cycle() -> None:
    edges = {m: {t for t, _ in targets if t in GRAPH and t != m} for m, targets in GRAPH.items()}
    # a package's __init__ is imported with any of its modules: not an edge of its own
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node)
    assert cycles == []


@pytest.mark.parametrize(
    ("module", "target", "allowed"),
    [
        ("replicator.pipeline.service", "replicator.ops.cutover", False),
        ("replicator.ops.verify", "replicator.pipeline.service", False),
        ("replicator.telemetry.server", "replicator.pipeline.service", False),
        ("replicator.app", "replicator.devtools.stack", False),
        ("replicator.cli.main", "replicator.app", True),
        ("replicator.ops.replay", "replicator.container", True),
    ],
)
def test_the_rule_itself(module: str, target: str, allowed: bool) -> None:
    """The check above can fail: a few imports it must refuse, and some it must let by."""
    assert against(module, target) is not allowed
