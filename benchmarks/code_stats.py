"""Size of the codebase: lines per package, the longest functions and classes.

    python benchmarks/code_stats.py [--limit-function 60] [--limit-class 250]

Counts non-blank lines of every .py file under cramming/, kernels/ and benchmarks/
(tests excluded), and measures each function and class from its `def`/`class` line
to its last line (decorators excluded). Exits 1 when a function or class is over
its limit, so CI can hold the limits the consolidation issue sets.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cramming", "kernels", "benchmarks")


def python_files(root: Path) -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (root / pkg).rglob("*.py"))


def package_of(path: Path, root: Path) -> str:
    """cramming/data/x.py -> cramming/data; cramming/x.py -> cramming."""
    return str(path.relative_to(root).parent)


def measure(path: Path) -> tuple[int, list[tuple[str, str, int]]]:
    """Non-blank line count and (kind, qualified name, length) of each def/class."""
    text = path.read_text(encoding="utf-8")
    lines = sum(1 for line in text.splitlines() if line.strip())
    spans: list[tuple[str, str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                kind = "class" if isinstance(child, ast.ClassDef) else "function"
                name = f"{prefix}{child.name}"
                spans.append((kind, name, child.end_lineno - child.lineno + 1))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(text), "")
    return lines, spans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-function", type=int, default=60)
    parser.add_argument("--limit-class", type=int, default=250)
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    args = parser.parse_args(argv)

    per_package: dict[str, int] = defaultdict(int)
    files_per_package: dict[str, int] = defaultdict(int)
    found: list[tuple[str, str, int]] = []
    for path in python_files(args.root):
        lines, spans = measure(path)
        per_package[package_of(path, args.root)] += lines
        files_per_package[package_of(path, args.root)] += 1
        rel = path.relative_to(args.root)
        found += [(kind, f"{rel}:{name}", n) for kind, name, n in spans]

    print("| package | files | non-blank lines |\n|---|---:|---:|")
    for pkg in sorted(per_package):
        print(f"| {pkg} | {files_per_package[pkg]} | {per_package[pkg]} |")
    print(f"| total | {sum(files_per_package.values())} | {sum(per_package.values())} |")

    over = 0
    for kind, limit in (("function", args.limit_function), ("class", args.limit_class)):
        ranked = sorted((f for f in found if f[0] == kind), key=lambda f: -f[2])
        print(f"\nlongest {kind}s (limit {limit}):")
        for _, name, n in ranked[: args.top]:
            print(f"  {n:4d}  {name}")
        too_long = [f for f in ranked if f[2] > limit]
        over += len(too_long)
        print(f"  {len(too_long)} over the limit")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
