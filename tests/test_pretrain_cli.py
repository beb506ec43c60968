"""The pretraining CLI end to end on the tiny corpus, and its answers to bad input."""

import hashlib
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import cramming
import cramming.models
import cramming.train.objective
from cramming.config import CONF_PATH
from cramming.data import prepare_corpus
from cramming.pretrain import pretrain_main
from cramming.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def run_cli(args, cwd, timeout=300):
    env = {**os.environ, "TRITON_INTERPRET": "0", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cramming", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tiny_args(tiny_corpus, tmp_path, name, budget):
    return [
        f"budget={budget}",
        f"name={name}",
        f"base_dir={tmp_path / 'outputs'}",
        "arch=tiny",
        "train=cpu",
        "train.batch_size_start=16",
        "train.batch_size=32",  # many small steps, so the loss visibly falls within seconds
        "data=local",
        f"data.files=[{tiny_corpus['train']}]",
        f"data.validation_files=[{tiny_corpus['valid']}]",
        "data.vocab_size=2048",
        f"data.cache_dir={tmp_path / 'cache'}",
        "impl.kernels=torch",
    ]


@pytest.fixture(scope="module")
def finished_run(tiny_corpus, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("pretrain")
    result = run_cli(tiny_args(tiny_corpus, tmp_path, "e2e", "40s"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path, result


def test_run_stops_by_itself_and_loss_falls(finished_run):
    tmp_path, result = finished_run
    run = tmp_path / "outputs" / "e2e"
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "summary.json", "plots/loss.png"):
        assert (run / name).is_file(), name
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (run / "model" / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["steps"] > 5
    assert 40 <= summary["elapsed_s"] < 40 + 15  # stopped by itself, small overshoot
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"] - 0.3
    valid = [r for r in records if r["kind"] == "valid"]
    assert valid and valid[-1]["loss"] < train[0]["loss"] - 0.3
    assert "budget spent" in (run / "log.txt").read_text()


def test_export_holds_the_final_trained_weights(finished_run):
    """The export's logits equal those of the model rebuilt from the last checkpoint (written at the
    same final step). Catches an export taken before the last steps, or weights lost in the export."""
    tmp_path, _ = finished_run
    run = tmp_path / "outputs" / "e2e"
    exported = cramming.load_model(run / "model")
    checkpoint = sorted((run / "checkpoints").glob("step_*.pt"))[-1]
    state = load_checkpoint(checkpoint)  # the safe loader (weights_only=True) reads our own checkpoints
    assert state["step"] == json.loads((run / "summary.json").read_text())["steps"]
    trained = cramming.models.build_mlm(state["arch"], state["vocab_size"])
    trained.load_state_dict(state["model"], strict=True)
    trained.eval()
    untrained = cramming.models.build_mlm(state["arch"], state["vocab_size"]).eval()
    ids = torch.randint(5, exported.vocab_size, (2, 32))
    with torch.no_grad():
        logits = exported(ids)["logits"]
        assert torch.equal(logits, trained(ids)["logits"])
        assert not torch.allclose(logits, untrained(ids)["logits"])  # the comparison can tell weights apart


def test_second_run_reuses_the_cache(finished_run, tiny_corpus):
    tmp_path, _ = finished_run
    result = run_cli(tiny_args(tiny_corpus, tmp_path, "again", "3steps"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    log_text = (tmp_path / "outputs" / "again" / "log.txt").read_text()
    assert "reusing cached corpus" in log_text
    summary = json.loads((tmp_path / "outputs" / "again" / "summary.json").read_text())
    assert summary["steps"] == 3


def test_bad_budget_from_the_command_line(tmp_path, tiny_corpus):
    result = run_cli(tiny_args(tiny_corpus, tmp_path, "bad", "abc"), cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert "budget='abc'" in result.stderr and "24h" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "cache").exists()  # refused before any work


def test_mistyped_and_unknown_keys_from_the_command_line(tmp_path, tiny_corpus):
    """Catches overrides that bypass the typed schema: a non-number where a number goes, or a misspelled
    key, would otherwise reach the run (or be silently ignored)."""
    for bad in ("arch.hidden_size=abc", "train.lrr=1"):
        result = run_cli([*tiny_args(tiny_corpus, tmp_path, "bad", "1m"), bad], cwd=tmp_path, timeout=120)
        assert result.returncode != 0
        assert bad.split("=")[0] in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "cache").exists()  # refused before any work


def test_unknown_arch_from_the_command_line(tmp_path):
    result = run_cli(["arch=huge", "budget=1m"], cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert "huge" in result.stderr and "crammed-bert" in result.stderr


def _main_with(overrides, capsys):
    with initialize_config_dir(config_dir=CONF_PATH, version_base="1.3"):
        cfg = compose("pretrain", overrides=overrides)
    with pytest.raises(SystemExit) as exit_info:
        pretrain_main(cfg)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("budget", ["-1h", "0", "12parsecs"])
def test_bad_budgets_in_process(budget, tmp_path, tiny_corpus, capsys):
    err = _main_with(tiny_args(tiny_corpus, tmp_path, "bad", budget), capsys)
    assert budget in err and "500steps" in err


def test_bad_data_files(tmp_path, tiny_corpus, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1") * 100)
    good_cache = tmp_path / "cache"
    prepare_corpus_cfg = tiny_args(tiny_corpus, tmp_path, "bad", "1m")
    for bad, fragment in [
        (str(tmp_path / "nothing-*.txt"), "nothing-"),
        (str(empty), "empty.txt"),
        (str(latin1), "latin1.txt"),
    ]:
        overrides = [o for o in prepare_corpus_cfg if not o.startswith("data.files=")] + [
            f"data.files=[{bad}]"
        ]
        err = _main_with(overrides, capsys)
        assert fragment in err, err
    assert not good_cache.exists()


def test_nothing_cached_is_damaged_by_a_bad_run(tmp_path, tiny_corpus, capsys, monkeypatch):
    """A run that fails after its data step (here the model fails to build) leaves the prepared
    corpus byte for byte as it was. Catches clean-up or a cache rewrite on the failure path."""
    args = tiny_args(tiny_corpus, tmp_path, "ok", "1m")
    with initialize_config_dir(config_dir=CONF_PATH, version_base="1.3"):
        cfg = compose("pretrain", overrides=args)
    corpus = prepare_corpus(cfg.data, log=lambda *a: None)

    def contents():
        files = sorted(p for p in Path(corpus.cache_dir).rglob("*") if p.is_file())
        return [(str(p), hashlib.sha256(p.read_bytes()).hexdigest()) for p in files]

    before = contents()
    assert before

    def broken_build(*args, **kwargs):
        raise ValueError("injected: the model failed to build")

    monkeypatch.setattr(cramming.train.objective, "build_mlm", broken_build)
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        err = _main_with(args, capsys)
    finally:  # the run's log.txt handler must not collect the next tests' lines
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
    assert "injected: the model failed to build" in err
    log_text = (tmp_path / "outputs" / "ok" / "log.txt").read_text()
    assert "data ready" in log_text  # the failure came after the data step used the cache
    assert contents() == before


def test_eval_glue_after_pretraining(finished_run, tiny_corpus, glue_dir):
    tmp_path, _ = finished_run
    args = tiny_args(tiny_corpus, tmp_path, "witheval", "2steps") + [
        "eval=glue",
        f"eval.glue_dir={glue_dir}",
        "eval.tasks=[sst2]",
        "eval.max_train_examples=64",
        "eval.max_eval_examples=64",
        "eval.epochs=1",
    ]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "outputs" / "witheval" / "glue" / "results.json").read_text())
    sst2 = results["tasks"]["sst2"]
    accuracy = sst2["median"]["accuracy"]
    assert set(sst2["median"]) == {"accuracy"} and math.isfinite(accuracy)
    assert sst2["examples"]["dev"] == {"dev": 64}  # eval.max_eval_examples of the SST-2 dev sentences
    confusion = sst2["classes"]["dev"]["confusion_matrix"]
    assert sum(map(sum, confusion)) == 64
    assert accuracy == pytest.approx(100 * sum(confusion[i][i] for i in range(len(confusion))) / 64)


def test_a_new_run_refuses_the_folder_of_an_earlier_one(finished_run, tiny_corpus, capsys):
    tmp_path, _ = finished_run
    checkpoints = sorted((tmp_path / "outputs" / "e2e" / "checkpoints").iterdir())
    err = _main_with(tiny_args(tiny_corpus, tmp_path, "e2e", "2steps"), capsys)
    assert "resume=true" in err and "another name" in err
    assert sorted((tmp_path / "outputs" / "e2e" / "checkpoints").iterdir()) == checkpoints
