"""Imports flow one way: every import in ``lowcomm/`` (at module level, in functions, under
``TYPE_CHECKING`` alike) goes from a package to a package in a lower layer of :data:`LAYERS`, or
stays inside its package; and no modules import each other round in a circle."""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS: Sequence[set[str]] = (
    {"cli"},
    {"benchmarks"},
    {"launching"},
    {"training", "integrations"},
    {"checkpointing", "reporting"},
    {"algorithms", "models", "data"},
    {"communication"},
    {"ownership"},
    {"atomic", "exit_codes", "presets"},
)
"""lowcomm's packages (and top-level modules) from the top down; docs/architecture.md says the same.
The package ``lowcomm`` itself (the public API) and ``lowcomm.__main__`` stand above them all."""
TOP = {"lowcomm", "lowcomm.__main__"}

Graph = Mapping[str, set[str]]


def module_graph(root: Path) -> dict[str, set[str]]:
    """Each module of the package at ``root / "lowcomm"`` to the lowcomm modules it imports."""
    files = {}
    for path in sorted((root / "lowcomm").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # "from lowcomm.x import y": module lowcomm.x.y if there is one, else lowcomm.x
                imported |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[module] = {found for name in imported if (found := innermost(name, files)) and found != module}
    return graph


def innermost(name: str, modules: Mapping[str, Path]) -> str | None:
    """The module of ``modules`` that ``name`` (a module or a name in one) lies in, if any."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def package(module: str) -> str:
    """``lowcomm.training.trainer`` -> ``training``; ``lowcomm.atomic`` -> ``atomic``."""
    return module if module in TOP else module.split(".")[1]


def upward_arrows(graph: Graph, layers: Sequence[set[str]]) -> list[str]:
    """The imports from a package to one in its own layer or above (not inside one package)."""
    layer = {name: depth for depth, names in enumerate(layers) for name in names}
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if module not in TOP and package(module) != package(target)
        and (target in TOP or layer[package(target)] <= layer[package(module)])
    )


def cycles(graph: Graph) -> list[list[str]]:
    """The sets of modules that import each other round in a circle (strongly connected, Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph.get(module, ()):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return module_graph(ROOT)


def test_every_package_has_a_layer(graph):
    layered = set().union(*LAYERS)
    assert {package(module) for module in graph} - TOP == layered


def test_imports_go_down_the_layers(graph):
    assert upward_arrows(graph, LAYERS) == []


def test_no_modules_import_each_other_in_a_circle(graph):
    assert cycles(graph) == []


def test_the_checks_find_an_upward_arrow_and_a_circle(tmp_path):
    for name, text in {
        "__init__.py": "",
        "cli/__init__.py": "",
        "cli/train.py": "from lowcomm.training.loop import train\n",
        "training/__init__.py": "",
        "training/loop.py": "def train():\n    from lowcomm.cli import main\n",
        "training/a.py": "from lowcomm.training import b\n",
        "training/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import lowcomm.training.a\n",
    }.items():
        (tmp_path / "lowcomm" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "lowcomm" / name).write_text(text)
    made_up = module_graph(tmp_path)
    assert made_up["lowcomm.cli.train"] == {"lowcomm.training.loop"}
    assert upward_arrows(made_up, ({"cli"}, {"training"})) == ["lowcomm.training.loop -> lowcomm.cli"]
    assert cycles(made_up) == [["lowcomm.training.a", "lowcomm.training.b"]]
