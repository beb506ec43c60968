"""Shared test set-up.

`python -m pytest -q` needs no environment: TRITON_INTERPRET=1 (set before any
@triton.jit decorator runs, i.e. before a test imports the kernels), offline Hugging Face
hub and datasets, wandb disabled. Each is a default only: benchmarks/run_gpu.sh sets
TRITON_INTERPRET=0 to run the kernels natively on a GPU, and that value is kept.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(min(2, os.cpu_count() or 1))


# Test data is made here, from files in the repository only (nothing outside the checkout): see tests/_fixture_data.py.
@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> dict:
    """{"train", "valid"}: plain-text slices of the shipped sample corpus (80 and 10 documents)."""
    from _fixture_data import write_tiny_corpus

    return write_tiny_corpus(tmp_path_factory.mktemp("tiny_corpus"))


@pytest.fixture(scope="session")
def _glue(tmp_path_factory) -> tuple:
    from _fixture_data import write_glue

    root = tmp_path_factory.mktemp("glue_data")
    return root, write_glue(root)


@pytest.fixture(scope="session")
def glue_dir(_glue) -> Path:
    """A glue_data/ folder with every GLUE task in its official TSV layout (generated sentences)."""
    return _glue[0]


@pytest.fixture(scope="session")
def glue_manifest(_glue) -> dict:
    """What ``glue_dir`` holds, per "TASK/stem": rows, label counts, first texts (see write_glue)."""
    return _glue[1]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


# Only `gpu`-marked tests may skip (on a machine without CUDA). Any other skip (a missing dependency,
# a missing tool, a test module skipped at import) fails the run, so that a green run never hides
# tests that did not run: the summary prints both counts, and .ci/run relies on the exit status.
_SKIPS = {"gpu": 0, "other": []}


def _count_skip(report) -> None:
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    if "gpu" in getattr(report, "keywords", {}):
        _SKIPS["gpu"] += 1
    else:
        _SKIPS["other"].append(report.nodeid)


def pytest_runtest_logreport(report):
    _count_skip(report)


def pytest_collectreport(report):
    _count_skip(report)  # e.g. pytest.importorskip at module level skips the whole file


def pytest_sessionfinish(session, exitstatus):
    if _SKIPS["other"] and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    other = _SKIPS["other"]
    terminalreporter.write_line(
        f"skipped: {_SKIPS['gpu']} gpu-marked (allowed), {len(other)} other (allowed: 0)"
    )
    if other:
        terminalreporter.write_line(
            "FAILED: tests other than gpu-marked ones were skipped: " + ", ".join(other), red=True
        )


@pytest.fixture
def restore_runtime_globals():
    """Entry points set torch's thread count and the ops dispatch, as a CLI would; undo that afterwards."""
    from cramming.kernels import dispatch as ops

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    ops.configure({"kernels": "auto"})
