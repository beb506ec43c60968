"""Distillation end to end on the tiny corpus: budget stop, export, resume, load_model and GLUE."""

import json
import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file
from tiny_export import CLI_IMPL, build_tiny_export

import cramming
from cramming.config import CONF_PATH
from cramming.distill import distill_main
from cramming.export.folder import load_tokenizer, save_export
from cramming.glue import run_glue
from cramming.models import BertForMLM

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_corpus):
    root = tmp_path_factory.mktemp("distill")
    build_tiny_export(tiny_corpus["train"], root / "teacher")
    return root


def overrides(tiny_corpus, root, name, *extra, budget="6steps"):
    return [
        f"teacher={root / 'teacher'}",
        f"budget={budget}",
        f"name={name}",
        f"base_dir={root / 'outputs'}",
        "train=cpu",
        "train.microbatch_size=16",
        "train.batch_size_start=16",
        "train.batch_size=16",
        "train.log_every=2",
        "train.validation_batches=2",
        "data=local",
        f"data.files=[{tiny_corpus['train']}]",
        f"data.validation_files=[{tiny_corpus['valid']}]",
        "data.vocab_size=2048",
        "data.seq_len=64",
        f"data.cache_dir={root / 'cache'}",
        *CLI_IMPL,
        *extra,
    ]


def run_in_process(args):
    with initialize_config_dir(config_dir=CONF_PATH, version_base="1.3"):
        return distill_main(compose("distill", overrides=args))


def test_cli_run_stops_on_budget_with_falling_loss_and_exports_a_usable_student(
    tiny_corpus, workdir, glue_dir
):
    """Catches a run that ignores the clock, a loss that does not fall, an export of the Distiller (teacher keys)
    or without its teacher record, and a student that load_model / GLUE cannot use."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    args = overrides(tiny_corpus, workdir, "timed", budget="20s")
    result = subprocess.run(
        [sys.executable, "-m", "cramming.distill", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = workdir / "outputs" / "timed"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and 20 <= summary["elapsed_s"] < 20 + 10 and summary["steps"] >= 4
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"] - 0.1
    assert {"mlm_loss", "kl_loss", "cosine_loss"} <= set(train[-1])
    # validation reports the student's MLM loss, not the weighted sum (which is at least 2 x MLM)
    valid = summary["valid_mlm_loss"]
    assert abs(valid - train[-1]["mlm_loss"]) < 0.5 and train[-1]["loss"] > valid + 0.5
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["task"] == "mlm" and config["arch"]["num_layers"] == 1
    assert config["teacher"]["path"] == str((workdir / "teacher").resolve())
    assert config["teacher"]["num_layers"] == 2 and config["teacher"]["student_layers_from"] == [0]
    assert not any(
        k.startswith(("student.", "teacher")) for k in load_file(run / "model" / "model.safetensors")
    )
    student = cramming.load_model(run / "model")
    assert isinstance(student, BertForMLM) and len(student.encoder.blocks) == 1
    settings = {
        "glue_dir": str(glue_dir), "tasks": ["rte"], "seeds": 1, "epochs": 1, "max_train_examples": 32,
        "max_eval_examples": 32, "max_length": 64, "submission": False, "impl": {"threads": 2, "kernels": "torch"},
    }  # fmt: skip
    results = run_glue(run / "model", settings, out_dir=workdir / "glue")
    assert results["tasks"]["rte"]["examples"]["train"] == 32 and "RTE" in results["headline"]


def test_stopped_then_resumed_matches_uninterrupted_and_another_teacher_is_refused(
    tiny_corpus, workdir, capsys
):
    """Catches a resume that restarts the student from the teacher, loses the data cursor or the optimizer
    (the weights would differ), and a resume against a different teacher."""
    run_in_process(overrides(tiny_corpus, workdir, "full"))
    args = overrides(tiny_corpus, workdir, "part")
    stopped = run_in_process([*args, "train.stop_after_steps=3"])
    assert stopped["finished"] is False and not (workdir / "outputs" / "part" / "model").exists()
    resumed = run_in_process([*args, "resume=true"])
    assert resumed["finished"] and resumed["steps"] == 6
    full = load_file(workdir / "outputs" / "full" / "model" / "model.safetensors")
    part = load_file(workdir / "outputs" / "part" / "model" / "model.safetensors")
    assert full.keys() == part.keys()
    for key in full:
        torch.testing.assert_close(part[key], full[key], rtol=1e-5, atol=1e-6, msg=key)

    torch.manual_seed(7)  # the same tokenizer, other weights
    other = workdir / "other-teacher"
    tok = load_tokenizer(workdir / "teacher")
    save_export(BertForMLM(cramming.load_model(workdir / "teacher").arch, tok.get_vocab_size()), tok, other)
    with pytest.raises(SystemExit):
        run_in_process(
            [*[a for a in args if not a.startswith("teacher=")], f"teacher={other}", "resume=true"]
        )
    assert "teacher_sha256" in capsys.readouterr().err
