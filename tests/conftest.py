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
SHARED_DATA = Path(os.environ.get("CRAMMING_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set CRAMMING_SHARED_DATA to the data folder)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only data folder beside the checkout (../shared/data)."""
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def tiny_corpus(shared_data: Path) -> dict:
    """Paths of the tiny train/valid corpus slice."""
    tiny = _require(shared_data / "corpus" / "tiny")
    return {"train": tiny / "train.txt", "valid": tiny / "valid.txt"}


@pytest.fixture(scope="session")
def glue_dir(shared_data: Path) -> Path:
    return _require(shared_data / "glue")


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
