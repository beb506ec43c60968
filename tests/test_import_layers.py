"""The parts of the package import each other one way only: no import runs from a lower part back up.

A part is a top-level module or subpackage of ``cramming`` (``cramming.train``, ``cramming.runtime``...,
the top-level ``kernels/`` folder counts as ``cramming.kernels``). Imports inside functions count too:
a deferred import still ties the two parts together. A cycle between parts is what an import from a lower
part to a higher one makes, so the test asserts the graph of parts has none.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def part_of(module: str) -> str:
    """cramming.train.loop -> cramming.train; cramming -> cramming."""
    return ".".join(module.split(".")[:2])


def module_of(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[0] == "kernels":  # the top-level folder is installed as cramming.kernels
        parts = ["cramming", *parts]
    return ".".join(p for p in parts if p != "__init__")


def imported_modules(tree: ast.AST, package: str) -> set[str]:
    """Every cramming module a file imports (absolute or relative, at any depth)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], base]
                ).strip(".")
            # `from cramming import train` imports the submodule cramming.train
            found |= {f"{base}.{alias.name}" if base == "cramming" else base for alias in node.names}
    return {m for m in found if m == "cramming" or m.startswith("cramming.")}


def part_graph(root: Path) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    files = [*(root / "cramming").rglob("*.py"), *(root / "kernels").glob("*.py")]
    for path in files:
        module = module_of(path, root)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = {part_of(m) for m in imported_modules(ast.parse(path.read_text(encoding="utf-8")), package)}
        source = part_of(module)
        graph.setdefault(source, set()).update(edges - {source})
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_part_imports_back_up():
    """Catches a lower part importing a higher one (e.g. config/ importing data/ or finetune/, export/
    importing the package root for its version): the two would import each other."""
    graph = part_graph(ROOT)
    assert {"cramming.config", "cramming.train", "cramming.models", "cramming.kernels"} <= set(graph)
    assert "cramming.config" in graph["cramming.runtime"]  # the graph sees real imports
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_a_deferred_import_back_up_is_seen(tmp_path):
    """Catches a checker that misses imports inside functions or relative ones (the test above would pass)."""
    (tmp_path / "cramming" / "low").mkdir(parents=True)
    (tmp_path / "kernels").mkdir()
    (tmp_path / "cramming" / "__init__.py").write_text("")
    (tmp_path / "cramming" / "high.py").write_text("from cramming.low import thing\n")
    (tmp_path / "cramming" / "low" / "__init__.py").write_text("thing = 1\n")
    (tmp_path / "cramming" / "low" / "helper.py").write_text("def f():\n    from ..high import x\n")
    assert find_cycle(part_graph(tmp_path)) == ["cramming.high", "cramming.low", "cramming.high"]
