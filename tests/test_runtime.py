"""One runtime for every entry point: device, precision, threads and kernels from the impl group."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_export import build_tiny_classifier, build_tiny_export, finetune_cfg, write_csv

from cramming import runtime
from cramming.finetune import run_finetune
from cramming.glue import run as glue
from cramming.predict import run_predict
from cramming.train import pretrain

PACKAGE = Path(runtime.__file__).parent
IMPL = {"device": "cpu", "precision": "fp32", "threads": 1, "kernels": "torch"}


pytestmark = pytest.mark.usefixtures("restore_runtime_globals")


class _Built(Exception):
    """Raised by the spy once an entry point asks runtime.py for its threads: its runtime is being built."""


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_corpus) -> dict:
    root = tmp_path_factory.mktemp("rt")
    mlm = build_tiny_export(tiny_corpus["train"], root / "model")
    return {"mlm": mlm, "classifier": build_tiny_classifier(mlm, root / "finetuned", ["a", "b"])}


def test_every_entry_point_builds_its_runtime_in_runtime_py(exports, glue_dir, tmp_path, monkeypatch):
    """Catches an entry point that sets threads or resolves its device its own way (as GLUE, finetune
    and predict did with classify.set_threads): it would never reach runtime.set_threads."""
    seen, current = {}, []

    def spy(threads):
        seen[current[-1]] = threads
        raise _Built

    monkeypatch.setattr(runtime, "set_threads", spy)
    train = write_csv(tmp_path / "train.csv", [{"text": "good", "label": "x"}, {"text": "bad", "label": "y"}])
    calls = {
        "pretrain": lambda: pretrain({"impl": dict(IMPL)}, tmp_path / "run", None),
        "glue": lambda: glue.run_glue(
            exports["mlm"], {"glue_dir": str(glue_dir), "tasks": ["rte"], "impl": dict(IMPL)}, tmp_path / "g"
        ),
        "finetune": lambda: run_finetune(
            finetune_cfg(
                model=str(exports["mlm"]), train_file=str(train), out_dir=str(tmp_path / "ft"), impl=IMPL
            )
        ),
        "predict": lambda: run_predict({"model": str(exports["classifier"]), "impl": dict(IMPL)}),
    }
    for name, call in calls.items():
        current.append(name)
        with pytest.raises(_Built):
            call()
    assert seen == {name: 1 for name in calls}


def test_glue_from_pretraining_passes_the_impl_group_through(exports, glue_dir, monkeypatch):
    """Catches a translation layer that drops keys (the old one kept device, precision and threads only)."""
    got = {}

    def spy(impl):
        got.update(runtime.resolve_impl(impl))
        raise _Built

    monkeypatch.setattr(glue, "make_runtime", spy)
    eval_cfg = {"name": "glue", "glue_dir": str(glue_dir), "tasks": ["rte"]}
    with pytest.raises(_Built):
        glue.run_glue_from_pretraining(exports["mlm"], eval_cfg, {**IMPL, "ops": {"attention": "torch"}})
    assert got["kernels"] == "torch" and got["ops"]["attention"] == "torch" and got["threads"] == 1


def test_null_threads_is_omp_num_threads_or_the_usable_cores(monkeypatch):
    """Catches a load-average policy (it counts this very process, and changes run to run)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    cores = len(os.sched_getaffinity(0))
    assert runtime.set_threads(None) == cores == torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert runtime.set_threads(None) == 1 == torch.get_num_threads()
    assert runtime.set_threads(2) == 2
    with pytest.raises(ValueError, match=r"impl.threads=0 must be a positive integer"):
        runtime.make_runtime({"threads": 0})


def test_same_impl_gives_the_same_runtime_and_bad_values_are_named():
    a, b = runtime.make_runtime(IMPL), runtime.make_runtime(dict(IMPL))
    assert (a.device, a.dtype, a.threads, a.precision) == (b.device, b.dtype, 1, "fp32")
    assert runtime.make_runtime({**IMPL, "precision": "bf16"}).precision == "bf16"
    with pytest.raises(ValueError, match=r"impl.precision='fp8' is not one of \['auto', 'bf16'"):
        runtime.make_runtime({**IMPL, "precision": "fp8"})
    with pytest.raises(ValueError, match=r"impl has unknown key\(s\) \['num_threads'\]"):
        runtime.make_runtime({"num_threads": 2})
    with pytest.raises(ValueError, match="impl.device='gpu' is not one of auto, cpu, cuda, cuda:N"):
        runtime.make_runtime({"device": "gpu"})


def test_one_definition_and_no_import_circle():
    """Catches PRECISIONS or set_threads defined again, and config <-> finetune importing each other."""
    source = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py"))
    assert len(re.findall(r"^PRECISIONS =", source, re.M)) == 1
    assert len(re.findall(r"def set_threads\b", source)) == 1
    for order in ("cramming.config, cramming.finetune", "cramming.finetune, cramming.config"):
        proc = subprocess.run([sys.executable, "-c", f"import {order}"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]


def test_glue_flat_keys_name_the_impl_key(monkeypatch, capsys):
    """Catches a leftover flat key silently ignored (the run would use the default device) or failing
    with Hydra's generic 'not in struct' message."""
    with pytest.raises(ValueError, match=r"num_threads= is now impl.threads="):
        glue.resolve_settings({"num_threads": 2})
    monkeypatch.setattr(sys, "argv", ["glue", "model=x", "device=cpu", "+kernels=torch"])
    with pytest.raises(SystemExit) as exit_info:
        glue.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "device= is now impl.device=" in err and "kernels= is now impl.kernels=" in err


@pytest.mark.parametrize("user", [None, "ACTIVE"])
def test_openmp_threads_sleep_when_idle_unless_the_user_says_otherwise(user):
    """Catches the wait policy set only in one script (bench_step.py) or overriding the user's own value."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user:
        env["OMP_WAIT_POLICY"] = user
    code = "import cramming, os, sys; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout
    assert out.split() == [user or "PASSIVE", "False"]  # set before torch (and its OpenMP) is loaded
