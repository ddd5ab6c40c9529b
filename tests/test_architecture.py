"""The shape of the house (docs/architecture.md): every module imports only its own layer and the layers below,
and no modules import each other in a circle — function-local imports included, ``if TYPE_CHECKING:`` blocks
excluded (they never run)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pyvision_env", "agents", "trainers", "benchmarks")

LAYERS = (
    ("foundation", ("pyvision_env.deprecation", "pyvision_env.video")),
    ("execution", ("pyvision_env.execution",)),
    ("env", ("pyvision_env",)),
    ("agents", ("agents",)),
    ("trainers", ("trainers",)),
    ("benchmarks", ("benchmarks",)),
)
"""Lowest first; a module belongs to the layer of its longest matching prefix."""


def layer_of(module: str) -> int:
    matches = [(len(prefix), rank) for rank, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    return max(matches)[1]


def modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Every module of ``packages`` under ``root``: dotted name -> file (a package is its ``__init__``)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _runs(node: ast.AST) -> Iterator[ast.AST]:
    """The nodes of ``node`` that can run: ``if TYPE_CHECKING:`` bodies are skipped."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
            yield from (grand for orelse in child.orelse for grand in [orelse, *_runs(orelse)])
            continue
        yield child
        yield from _runs(child)


def imports(module: str, path: Path, known: set[str]) -> set[tuple[str, int]]:
    """The project modules ``module`` imports, with the line: ``from a import b`` is module ``a.b`` when that is
    a module, else ``a``; relative imports are resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in _runs(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known and "." in target:  # `import a.b.c` where c is a name
                target = target.rpartition(".")[0]
            if target in known and target != module:
                found.add((target, node.lineno))
    return found


def upward_imports(root: Path) -> list[str]:
    known = modules(root)
    return [f"{module} (line {line}) imports {target}: layer {LAYERS[layer_of(target)][0]} is above "
            f"{LAYERS[layer_of(module)][0]}"
            for module, path in known.items() for target, line in sorted(imports(module, path, set(known)))
            if layer_of(target) > layer_of(module)]


def import_cycles(root: Path) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    known = modules(root)
    graph = {module: sorted({target for target, _ in imports(module, path, set(known))})
             for module, path in known.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in graph:
        if module not in index:
            visit(module)
    return cycles


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports(ROOT) == []


def test_no_import_cycles():
    assert import_cycles(ROOT) == []


def test_the_checks_find_what_they_look_for(tmp_path):
    """A tree with an upward import (also function-local), a cycle kept alive by a local import, and an
    upward import that only type checkers see (not a violation)."""
    files = {
        "pyvision_env/__init__.py": "",
        "pyvision_env/env.py": "def make():\n    from agents.policy import Policy\n",
        "pyvision_env/registry.py": "from .env import make\n",
        "pyvision_env/execution/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                              "    from ..env import make\n",
        "agents/__init__.py": "",
        "agents/policy.py": "import trainers.grpo\nclass Policy: ...\n",
        "agents/scripted.py": "def f():\n    from . import video\n",
        "agents/video.py": "from .scripted import f\n",
        "trainers/__init__.py": "",
        "trainers/grpo.py": "",
        "benchmarks/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert upward_imports(tmp_path) == [
        "pyvision_env.env (line 2) imports agents.policy: layer agents is above env",
        "agents.policy (line 1) imports trainers.grpo: layer trainers is above agents",
    ]
    assert import_cycles(tmp_path) == [["agents.scripted", "agents.video"]]


@pytest.mark.parametrize("module, layer", [("pyvision_env.execution.engine", "execution"),
                                           ("pyvision_env.video.reader", "foundation"),
                                           ("pyvision_env.wrappers.core", "env"), ("benchmarks", "benchmarks")])
def test_layers_of_modules(module, layer):
    assert LAYERS[layer_of(module)][0] == layer
