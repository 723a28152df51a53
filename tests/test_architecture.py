"""The package's shape: arrows point downward, no import cycle (TYPE_CHECKING imports included), a
pure-Python core, and files small enough to read."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MODULES = {
    ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): path
    for path in sorted((SRC / "rkopt").rglob("*.py"))
}
LAYERS = [
    ("rkopt.core",),
    ("rkopt.torch", "rkopt.optax"),
    ("rkopt.bench",),
    ("rkopt.cli",),
    ("rkopt.integrations",),
]
"""Lowest first; a module may import only from its own layer or lower ones (rkopt/__init__ aside);
the two bindings are one layer and never import each other."""


def imports(module: str) -> set[str]:
    """Every module named by an import statement anywhere in ``module`` (absolute names)."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
    return names


GRAPH = {module: {name for name in imports(module) if name in MODULES} for module in MODULES}


def layer(module: str) -> int:
    return next(
        i
        for i, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    )


def test_the_bindings_do_not_import_each_other():
    for module, names in GRAPH.items():
        for a, b in (("rkopt.torch", "rkopt.optax"), ("rkopt.optax", "rkopt.torch")):
            if module.startswith(a):
                assert not [n for n in names if n.startswith(b)], module


def test_there_is_no_import_cycle():
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for name in sorted(GRAPH[module]):
            if state.get(name) == "open":
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(name) :], name]))
            if name not in state:
                visit(name, [*path, name])
        state[module] = "done"

    for module in MODULES:
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("module", [m for m in MODULES if m != "rkopt"])
def test_arrows_point_downward(module):
    upward = [name for name in GRAPH[module] if name != "rkopt" and layer(name) > layer(module)]
    assert not upward, f"{module} imports {upward} from a higher layer"


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("rkopt.core")])
def test_the_core_is_pure_python(module):
    stdlib = set(sys.stdlib_module_names)
    foreign = [name for name in imports(module) if name.split(".")[0] not in stdlib | {"rkopt", "__future__"}]
    assert not foreign, f"{module} imports {foreign}"
    assert all(name.startswith("rkopt.core") for name in imports(module) if name.startswith("rkopt"))


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith(("rkopt.core", "rkopt.torch"))])
def test_solver_and_binding_files_stay_readable(module):
    assert len(MODULES[module].read_text().splitlines()) <= 440, module
