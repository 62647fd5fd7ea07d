"""The import graph of recspark has no cycle.

Reads every module under recspark/ with ``ast`` (nothing is imported, so this runs in a blink) and
collects both module-level and function-level imports: an import inside a function still ties the
two modules together and only hides the cycle until the function runs.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "recspark"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def resolve(name: str, known: set[str]) -> str | None:
    """The recspark module ``name`` refers to: itself, else its longest known prefix (an attribute
    of a module, e.g. ``recspark.constants.PAD_IDX``); None outside recspark."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The recspark modules ``module`` imports anywhere in its file (the package __init__ files a
    submodule import also runs are left out: they are import machinery, not a dependency)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package of this module
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from recspark import constants` imports recspark.constants; `from x import NAME` imports x.
            targets = [f"{prefix}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            resolved = resolve(target, known)
            if resolved is not None and resolved != module:
                found.add(resolved)
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {module: imports_of(module, path, known) for module, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, colouring nodes)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_function_level_and_relative_imports_count(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("from recspark import constants as C\n"
                      "def f():\n    from recspark.models.early_stopping import top_k_items\n    from . import scoring\n")
    known = {"recspark", "recspark.constants", "recspark.models", "recspark.models.early_stopping", "recspark.scoring"}
    assert imports_of("recspark.m", source, known) == {"recspark.constants", "recspark.models.early_stopping",
                                                       "recspark.scoring"}


def test_recspark_has_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 30 and "recspark.scoring" in graph  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
