"""data=sample: the corpus shipped inside the package, found through pkg:// paths, usable offline."""

import gzip
import json
import os
import subprocess
import sys

import pytest

from cramming.data.config import as_dict, expand_paths, validate_data_config

MAX_BYTES = 2_000_000  # the bound on what the package ships (compressed)


def sample_cfg() -> dict:
    from hydra import compose, initialize_config_dir

    from cramming.config import CONF_PATH

    with initialize_config_dir(config_dir=CONF_PATH, version_base="1.3"):
        return as_dict(compose("pretrain", overrides=["data=sample"]).data)


def paragraphs(path) -> set[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return {line.strip() for line in f if len(line.split()) >= 8}


def test_sample_preset_points_into_the_installed_package():
    """Catches data=sample naming files relative to the working folder (a fresh clone run elsewhere
    finds nothing), files missing from the package, or a corpus grown past the size bound."""
    import cramming

    cfg = sample_cfg()
    validate_data_config(cfg)
    assert cfg["source"] == "local" and cfg["files"][0].startswith("pkg://cramming.data/")
    train = expand_paths(cfg["files"], "files")
    valid = expand_paths(cfg["validation_files"], "validation_files")
    package = os.path.dirname(cramming.__file__)
    for path in train + valid:
        assert str(path.resolve()).startswith(package), path
    assert sum(p.stat().st_size for p in train + valid) <= MAX_BYTES
    readme = (train[0].parent / "README.md").read_text()
    assert "public domain" in readme and "Project Gutenberg" in readme


def test_validation_books_are_held_out():
    """Catches a validation file whose text also sits in the train file (a held-out loss that is not)."""
    cfg = sample_cfg()
    train = paragraphs(expand_paths(cfg["files"], "files")[0])
    valid = paragraphs(expand_paths(cfg["validation_files"], "validation_files")[0])
    assert len(valid) > 100 and not train & valid


def test_bad_package_paths_are_named():
    """Catches a pkg:// path to a package that does not exist failing with a traceback deep inside
    importlib, and a missing file inside a real package passing validation."""
    with pytest.raises(ValueError, match="no_such_package_xyz"):
        expand_paths(["pkg://no_such_package_xyz/train.txt.gz"], "files")
    with pytest.raises(ValueError, match=r"data.files entry 'pkg://cramming.data/sample/nope.txt.gz'"):
        expand_paths(["pkg://cramming.data/sample/nope.txt.gz"], "files")


@pytest.mark.slow
def test_readme_smoke_command_runs_offline_from_another_folder(tmp_path):
    """The README's first run (`python -m cramming budget=3m arch=tiny data=sample`, here 3 steps), in a
    folder that is not the repository, with the hub offline. Catches anything that needs the network
    or the repository as working folder (a relative corpus path, a BERT vocab download)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("TRITON_INTERPRET", None)  # the product as users run it
    cmd = [sys.executable, "-m", "cramming", "budget=3steps", "arch=tiny", "data=sample", "name=check",
           "impl.threads=1", "train.validation_batches=2"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "outputs" / "check" / "summary.json").read_text())
    assert summary["finished"] and (tmp_path / "outputs" / "check" / "model" / "tokenizer.json").is_file()
    tokenizer = json.loads((tmp_path / "outputs" / "check" / "model" / "tokenizer.json").read_text())
    assert len(tokenizer["model"]["vocab"]) == 8192  # trained here on the sample, not a downloaded vocab
