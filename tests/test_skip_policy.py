"""conftest's skip policy: only gpu-marked tests may skip; any other skip fails the run (.ci/run relies on it)."""

import shutil
import subprocess
import sys
from pathlib import Path

import torch

CONFTEST = Path(__file__).resolve().parent / "conftest.py"

GPU_ONLY = """
import pytest

@pytest.mark.gpu
def test_on_gpu():
    pass

def test_plain():
    pass
"""
SKIPS = """
import pytest

def test_skips():
    pytest.skip("data not found")
"""
MODULE_SKIP = """
import pytest

pytest.importorskip("no_such_module_for_cramming_tests")

def test_never_runs():
    pass
"""


def run_pytest(tmp_path: Path, files: dict[str, str]) -> subprocess.CompletedProcess:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a CUDA device\n")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_gpu_marked_skips_pass_and_are_counted(tmp_path):
    """Catches the policy failing a run whose only skips are the allowed gpu-marked ones."""
    proc = run_pytest(tmp_path, {"test_gpu.py": GPU_ONLY})
    assert proc.returncode == 0, proc.stdout[-2000:]
    gpu_skips = 0 if torch.cuda.is_available() else 1
    assert f"skipped: {gpu_skips} gpu-marked (allowed), 0 other" in proc.stdout


def test_any_other_skip_fails_the_run_and_is_named(tmp_path):
    """Catches a skipped test (e.g. missing data) or a test file skipped at import leaving the run green."""
    proc = run_pytest(tmp_path, {"test_gpu.py": GPU_ONLY, "test_skips.py": SKIPS, "test_mod.py": MODULE_SKIP})
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "2 other (allowed: 0)" in proc.stdout
    assert "test_skips.py::test_skips" in proc.stdout and "test_mod.py" in proc.stdout
