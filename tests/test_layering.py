"""The package's import graph: no circles, and every module imports only from the modules below it.

The order is the one documented in docs/design.md's "Layering" block (modules listed bottom-up; the first mention of
``name.py`` in the block fixes a module's place). The graph is read from the source with ``ast``: module-level,
function-level and ``TYPE_CHECKING`` imports alike, absolute and relative. Nothing is imported, so this runs in
milliseconds and reports every offending import with its line.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "rllib_muzero"
PACKAGE_DIR = ROOT / PACKAGE
INIT = "__init__"


def package_modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE_DIR.glob("*.py"))


def imports_of(path: Path, modules: set[str]) -> list[tuple[str, int]]:
    """``(imported package module, line)`` for every import in the file ``path`` (a module of the package);
    ``__init__`` stands for the package itself (``import rllib_muzero``, ``from rllib_muzero import SomeClass``)."""
    module = path.stem
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, int]] = []

    def add_dotted(dotted: str, names: list[str], line: int) -> None:
        parts = dotted.split(".")
        if parts[0] != PACKAGE:
            return
        if len(parts) >= 2:
            found.append((parts[1], line))
            return
        for name in names:  # from rllib_muzero import x: a submodule, or a name of the package's __init__
            found.append((name if name in modules else INIT, line))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add_dotted(alias.name, [], node.lineno)
                if alias.name == PACKAGE:
                    found.append((INIT, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
            if node.level == 0:
                add_dotted(node.module or "", names, node.lineno)
            elif node.level == 1:  # inside the package: from .x import y / from . import x
                add_dotted(f"{PACKAGE}.{node.module}" if node.module else PACKAGE, names, node.lineno)
    return [(dep, line) for dep, line in found if dep != module]


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}."""
    modules = set(package_modules())
    graph: dict[str, dict[str, int]] = {}
    for module in modules:
        deps: dict[str, int] = {}
        for dep, line in imports_of(PACKAGE_DIR / f"{module}.py", modules):
            deps.setdefault(dep, line)
        graph[module] = deps
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, {})):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def documented_order() -> list[str]:
    """The modules in the order of docs/design.md's Layering block (bottom-up)."""
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    match = re.search(r"^## Layering\s*\n(.*?)^## ", text, flags=re.S | re.M)
    assert match, "docs/design.md has no '## Layering' section"
    block = re.search(r"```\n(.*?)```", match.group(1), flags=re.S)
    assert block, "docs/design.md's Layering section has no ``` block"
    order: list[str] = []
    for name in re.findall(r"\b(\w+)\.py\b", block.group(1)):
        if name not in order:
            order.append(name)
    return order


# ---------------------------------------------------------------------------------------------------------------------
# The helpers on known inputs.

def test_find_cycle_reports_the_circle_and_accepts_a_dag():
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1, "c": 1}, "b": {"c": 1}, "c": {}}) is None


def test_imports_of_reads_every_kind_of_import(tmp_path):
    (tmp_path / "x.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import rllib_muzero.a\n"
        "from rllib_muzero import b, SomeClass\n"
        "from .c import thing\n"
        "if TYPE_CHECKING:\n"
        "    from rllib_muzero.d import T\n"
        "def f():\n"
        "    import rllib_muzero\n"
        "    from rllib_muzero.e import g\n"
    )
    deps = sorted(imports_of(tmp_path / "x.py", {"a", "b", "c", "d", "e", "x"}), key=lambda d: (d[1], d[0]))
    assert deps == [("a", 2), (INIT, 3), ("b", 3), ("c", 4), ("d", 6), (INIT, 8), ("e", 9)]


# ---------------------------------------------------------------------------------------------------------------------
# The package.

def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(f"{m}.py" for m in cycle)


def test_every_module_has_its_place_in_the_documented_layering():
    order = documented_order()
    modules = set(package_modules()) - {INIT}
    missing = sorted(modules - set(order))
    unknown = sorted(set(order) - modules - {INIT})
    assert not missing, f"modules missing from docs/design.md's Layering block: {missing}"
    assert not unknown, f"docs/design.md's Layering block names modules that do not exist: {unknown}"


def test_every_module_imports_only_from_the_modules_below_it():
    order = [m for m in documented_order() if m != INIT]
    rank = {m: i for i, m in enumerate(order)}
    violations = []
    for module, deps in sorted(import_graph().items()):
        if module == INIT or module not in rank:
            continue  # the package's __init__ sits on top; a module missing from the order fails the test above
        for dep, line in sorted(deps.items(), key=lambda d: d[1]):
            if dep == INIT:
                violations.append(f"{module}.py:{line} imports the package itself (rllib_muzero/__init__.py)")
            elif dep in rank and rank[dep] > rank[module]:
                violations.append(f"{module}.py:{line} imports {dep}.py, which docs/design.md lists above it")
    assert not violations, "\n".join(violations)


FRAMEWORK_FREE = ["columns", "support", "mcts", "consistency", "host_memory", "gumbel", "targets", "replay", "losses",
                  "reanalyse", "numpy_inference", "acting"]


@pytest.mark.parametrize("module", FRAMEWORK_FREE)
def test_the_framework_free_core_does_not_import_ray(module):
    """The modules a port to RLlib's new stack reuses unchanged (README, "Layout") never import Ray."""
    tree = ast.parse((PACKAGE_DIR / f"{module}.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        assert not any(n == "ray" or n.startswith("ray.") for n in names), f"{module}.py:{node.lineno} imports Ray"


def test_every_module_is_in_the_readme_layout_table():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Layout\s*\n(.*?)^## ", text, flags=re.S | re.M)
    assert match, "README.md has no '## Layout' section"
    listed = set(re.findall(r"\b(\w+)\.py\b", match.group(1)))
    missing = sorted(set(package_modules()) - {INIT} - listed)
    assert not missing, f"modules missing from the README's Layout table: {missing}"
