"""The size limits the codebase keeps: no function over 60 lines, no class over 250 (benchmarks/code_stats.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "code_stats.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_no_function_or_class_over_its_limit():
    """Catches a function growing past 60 lines or a class past 250 anywhere in cramming/, kernels/, benchmarks/."""
    result = run()
    assert result.returncode == 0, result.stdout


def test_the_counter_sees_a_long_function_and_a_long_nested_class(tmp_path):
    """Catches a counter that measures nothing (the test above would then pass on any code)."""
    package = tmp_path / "cramming"
    package.mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(60))  # with its def line: 61 lines
    short = "".join(f"    y{i} = {i}\n" for i in range(49))
    methods = "".join(f"def m{i}(self):\n{short}" for i in range(5))  # five 50-line methods
    nested = "class Outer:\n    class Inner:\n" + textwrap.indent(methods, " " * 8)  # Inner: 251 lines
    (package / "big.py").write_text(f"def long():\n{body}\n\n{nested}")
    result = run("--root", str(tmp_path), "--top", "10")
    assert result.returncode == 1, result.stderr
    functions, classes = result.stdout.split("longest classs")
    assert "61  cramming/big.py:long" in functions and "1 over the limit" in functions
    assert "251  cramming/big.py:Outer.Inner" in classes and "2 over the limit" in classes
    assert "| cramming | 1 |" in result.stdout
