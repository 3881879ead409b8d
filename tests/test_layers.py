"""The layering of docs/architecture.md, read from the source: imports only go downward, and no cycles.

`step/` knows nothing of the engine, configs, the application or Hydra; the engine knows
nothing of configs, the application or Hydra; configs and parts never import the
application. Read statically (every `import` and `from ... import`, lazy ones included),
so a forbidden import inside a function is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "composeloop"

FORBIDDEN = {
    "step": ("composeloop.engine", "composeloop.config", "composeloop.app", "hydra", "omegaconf"),
    "engine": ("composeloop.config", "composeloop.app", "hydra", "omegaconf"),
    "config": ("composeloop.app",),
    "parts": ("composeloop.app", "composeloop.config", "hydra"),
    "testing": ("composeloop.app", "composeloop.config", "hydra"),
}
# Plain modules every layer may use: they import nothing of composeloop's layers.
FOUNDATIONS = ("errors.py", "vocabulary.py", "files.py", "cluster.py")


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer):
    offences = [
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in sorted((PACKAGE / layer).rglob("*.py"))
        for name in imports(path)
        if name.startswith(FORBIDDEN[layer])
    ]
    assert not offences, offences


def test_foundations_import_no_layer():
    layers = tuple(f"composeloop.{layer}" for layer in (*FORBIDDEN, "app"))
    for name in FOUNDATIONS:
        assert not [i for i in imports(PACKAGE / name) if i.startswith(layers)], name


def test_no_module_level_import_cycles():
    """Cycles among module-level imports (lazy imports inside functions are how layers defer TF)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        targets = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("composeloop"):
                # `from package import module` depends on the module, not on the package's __init__.
                modules = {f"{node.module}.{alias.name}" for alias in node.names}
                found = {m for m in modules if (PACKAGE.parent / m.replace(".", "/")).with_suffix(".py").exists()}
                targets |= found if found == modules else {node.module}
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name.startswith("composeloop")}
        graph[module_name(path)] = targets
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(target) :], target]))
            if target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
