"""The repository's top-level folders never shadow installed packages, and a wheel holds everything.

`kernels/` and `conf/` are installed as `cramming.kernels` / `cramming.conf`; when they were regular
packages (with `__init__.py`), running anything from the repository root (`python -m pytest`, a
notebook) imported them instead of Hugging Face's installed `kernels`, and transformers failed with
`ImportError: cannot import name 'CUDAProperties' from 'kernels'`.
"""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(code: str, cwd: Path, env_path: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if env_path:
        env["PYTHONPATH"] = env_path
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)


def test_no_top_level_folder_is_a_regular_package():
    """Catches a re-added kernels/__init__.py or conf/__init__.py (or any new shadowing folder)."""
    shadowing = [d.name for d in REPO.iterdir() if d.is_dir() and (d / "__init__.py").exists()]
    assert shadowing == ["cramming"], shadowing


def test_transformers_imports_from_the_repository_root():
    """The real failure: from the root, transformers must get Hugging Face's kernels, not ours."""
    pytest.importorskip("kernels")  # a dev dependency: installed wherever the test suite runs
    code = (
        "import importlib.util, pathlib\n"
        "spec = importlib.util.find_spec('kernels')\n"
        # origin None would be a namespace package made from the root folder
        f"assert spec.origin and not pathlib.Path(spec.origin).resolve().is_relative_to({str(REPO / 'kernels')!r}), spec\n"
        "from transformers import BertForMaskedLM\n"
        "import cramming.kernels.norm_ref, cramming.conf\n"
        "print('ok', spec.origin)\n"
    )
    result = _run(code, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout


def test_installed_packages_named_like_root_folders_win(tmp_path):
    """Any installed `kernels` or `conf` package wins over the root folders of the same name."""
    site = tmp_path / "site"
    for name in ("kernels", "conf"):
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text("MARK = 'installed'\n")
    code = "import kernels, conf; print(kernels.MARK, conf.MARK)"
    result = _run(code, cwd=REPO, env_path=str(site))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["installed", "installed"]


@pytest.mark.slow
def test_wheel_holds_kernels_and_configs(tmp_path):
    """A wheel (pip install . / a release) must carry the kernels, every YAML and the export templates."""
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(tmp_path.glob("cramming-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(site)
    assert "cramming/kernels/flash_attention.py" in names and "cramming/kernels/dispatch.py" in names
    assert "cramming/conf/pretrain.yaml" in names and "cramming/conf/arch/tiny.yaml" in names
    assert "cramming/models/encoder.py" in names and "cramming/export/__main__.py" in names
    # the remote-code templates `python -m cramming.export` copies next to the weights
    assert "cramming/export/hf/modeling_cramming.py" in names
    assert "cramming/export/hf/configuration_cramming.py" in names
    assert not any(n.startswith(("kernels/", "conf/")) for n in names), "top-level folders leaked"
    code = (
        "import cramming.kernels as k, cramming.conf as c\n"
        "from cramming.kernels.norm_ref import layer_norm_ref\n"
        "from cramming.kernels.dispatch import configure\n"
        f"assert k.__path__[0].startswith({str(site)!r}), k.__path__\n"
        f"assert str(c.CONF_DIR).startswith({str(site)!r}), c.CONF_DIR\n"
        "print(c.read_yaml('impl', 'default.yaml')['kernels'])\n"
    )
    # Run outside the repository with only the unpacked wheel added, so nothing resolves to the checkout.
    paths = [str(site)] + [p for p in sys.path if p and "site-packages" in p]
    result = _run(code, cwd=tmp_path, env_path=":".join(paths))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "auto"
