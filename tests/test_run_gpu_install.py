"""run_gpu.sh installs the project offline on the GPU machine's image, proved on CPU.

The stand-in for the image is a fresh venv that sees only the distributions the image has
(benchmarks/gpu_image_packages.txt, copied from the device notes), taken from this machine's own
environment through symlinks: torch 2.13 CPU and triton 3.8 stand in for the image's 2.11 and 3.6.
Why not ``--system-site-packages`` (it would also see hydra, omegaconf, datasets and wandb, which the
image lacks, so a missing wheel would go unnoticed) and why not ``pip install torch`` into the venv
(hundreds of MB per CI run, and no faithful pin of the image either): the symlinks cost a second and
leave out exactly what the image leaves out. pip runs with no configuration and ``--no-index``, as on
the GPU machine, which reaches no index.
"""

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGE_LIST = REPO / "benchmarks" / "gpu_image_packages.txt"
ABSENT = ("hydra", "omegaconf", "antlr4", "datasets", "wandb")  # not in the image: must not leak in


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages() -> set[str]:
    lines = IMAGE_LIST.read_text().splitlines()
    return {canonical(line.strip()) for line in lines if line.strip() and not line.startswith("#")}


def build_standin(root: Path) -> Path:
    """A venv whose site-packages hold links to this environment's copies of the image's packages only;
    returns its python."""
    venv, image_dir = root / "venv", root / "image"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    image_dir.mkdir()
    wanted = image_packages()
    for dist in importlib.metadata.distributions():
        if canonical(dist.metadata["Name"]) not in wanted:
            continue
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source, link = Path(str(dist.locate_file(top))), image_dir / top
            if source.exists() and not link.exists() and not top.endswith(".pth"):
                link.symlink_to(source)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "gpu_image_standin.pth").write_text(f"{image_dir}\n")
    return python


def offline_env(python: Path, **extra: str) -> dict:
    """The GPU machine's situation: no pip configuration (no index, no find-links), the stand-in first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV", "PYTHON"))}
    env |= {"PIP_CONFIG_FILE": os.devnull, "PYTHON": str(python), "PATH": f"{python.parent}:{env['PATH']}"}
    return env | extra


def run(cmd: list[str], env: dict, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # ~1-2 min: builds the wheels, the venv, installs, runs kernel tests in the interpreter
def test_offline_install_on_a_standin_of_the_gpu_image(tmp_path, tiny_corpus):
    """Catches run_gpu.sh needing a package index on the GPU machine (build isolation fetching
    setuptools, a dependency missing from the carried wheels: hydra-core, omegaconf, antlr4), a wheel
    folder too big to carry, an import failure that does not stop the run at once with one clear
    line, results not packed into at most 8 files, and kernels or checks that fail in the image's
    environment (no hydra before the install, no wandb or datasets ever)."""
    wheels, empty = tmp_path / "wheels", tmp_path / "no_wheels"
    empty.mkdir()
    made = run(["bash", "benchmarks/gpu_wheels.sh", str(wheels)], {**os.environ, "PYTHON": sys.executable})
    assert made.returncode == 0, made.stderr
    names = sorted(p.name for p in wheels.glob("*.whl"))
    assert [n.split("-")[0] for n in names] == ["antlr4_python3_runtime", "hydra_core", "omegaconf"]
    assert sum(p.stat().st_size for p in wheels.iterdir()) < 2 * 2**20  # carried with the tree (<= 64 MiB)

    python = build_standin(tmp_path)
    probe = run(
        [str(python), "-c", "import torch, triton, yaml, tokenizers, setuptools, pip"], offline_env(python)
    )
    assert probe.returncode == 0, probe.stderr
    for name in ABSENT:
        assert run([str(python), "-c", f"import {name}"], offline_env(python)).returncode != 0, name

    # no wheels carried: the run stops at once, with one line, and still packs what it has
    out = tmp_path / "out"
    aborted = run(
        ["bash", "benchmarks/run_gpu.sh"], offline_env(python, CRAMMING_GPU_WHEELS=str(empty), OUT=str(out))
    )
    assert aborted.returncode == 3
    abort_lines = [line for line in aborted.stdout.splitlines() if "ABORT" in line]
    assert len(abort_lines) == 1 and "import cramming.kernels, hydra" in abort_lines[0]
    assert "No module named 'hydra'" in abort_lines[0] and "gpu_wheels.sh" in abort_lines[0]
    assert "== kernel_tests" not in aborted.stdout  # nothing after the install ran
    packed = sorted(p.name for p in out.iterdir())
    assert len(packed) <= 8 and all((out / p).is_file() for p in packed)
    assert {"summary.md", "summary.json", "results.tar.gz"} <= set(packed)

    env = offline_env(python, CRAMMING_GPU_WHEELS=str(wheels))
    installed = run(["bash", "benchmarks/run_gpu.sh", "--install-only"], env)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "install: 3 wheels" in installed.stdout and "project editable" in installed.stdout
    check = "import cramming.kernels, cramming.pretrain, cramming.train, hydra, omegaconf; print(cramming.__file__)"
    elsewhere = run(
        [str(python), "-c", check], env, cwd=tmp_path
    )  # the install, not the checkout on sys.path
    assert elsewhere.returncode == 0 and elsewhere.stdout.startswith(str(REPO)), elsewhere.stderr

    # a pretraining run there (wandb and datasets absent): 2 steps of the tiny arch, one thread
    trained = run([str(python), "-m", "cramming", "arch=tiny", "train=cpu", "budget=2steps", "name=standin",
                   f"base_dir={tmp_path / 'runs'}", "data=local", f"data.files=[{tiny_corpus['train']}]",
                   "data.vocab_size=1024", f"data.cache_dir={tmp_path / 'cache'}", "impl.kernels=torch",
                   "impl.threads=1", "impl.device=cpu", "eval=none", "train.validation_batches=1"], env)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert '"finished": true' in (tmp_path / "runs" / "standin" / "summary.json").read_text()

    planned = run(["bash", "benchmarks/run_gpu.sh", "--dry-run"], env)
    assert planned.returncode == 0 and "sum of caps: 480 s" in planned.stdout, planned.stderr

    # the kernels in the interpreter, the dispatch and its self-check, the precision check script
    tests = ["tests/test_ops.py", "tests/test_kernels_attention.py::test_base_offsets_are_64_bit",
             "tests/test_kernels_gelu.py", "-k", "not slow and (self_check or 64_bit or geglu)"]  # fmt: skip
    tested = run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], env, timeout=600)
    assert tested.returncode == 0 and " passed" in tested.stdout, tested.stdout[-3000:]
    for check in ("env", "dynamo", "errors"):  # the run's check scripts, as its steps call them
        done = run([str(python), "benchmarks/gpu_checks.py", check, str(tmp_path / f"{check}.json"), "--device",
                    "cpu", "--small"], env | {"TRITON_INTERPRET": "1"})  # fmt: skip
        assert done.returncode == 0, (check, done.stderr[-3000:])
    assert (tmp_path / "env.json").read_text().count("triton-interpreter") > 0
