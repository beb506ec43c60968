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


# Test data is made here, from files in the repository only (no ../shared): see tests/_fixture_data.py.
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


@pytest.fixture
def restore_runtime_globals():
    """Entry points set torch's thread count and the ops dispatch, as a CLI would; undo that afterwards."""
    from cramming import ops

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    ops.configure({"kernels": "auto"})
