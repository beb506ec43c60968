"""Prediction with a fine-tuned export: API, CLI (files and stdin), output formats, bad input."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_export import CLI_IMPL, build_tiny_classifier, build_tiny_export, read_glue_tsv, write_csv

from cramming.kernels import dispatch as ops
from cramming.predict import Predictor, run_predict, stdin_examples

REPO_ROOT = Path(__file__).resolve().parents[1]
LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_corpus) -> dict:
    root = tmp_path_factory.mktemp("predict")
    mlm = build_tiny_export(tiny_corpus["train"], root / "model")
    return {"mlm": mlm, "classifier": build_tiny_classifier(mlm, root / "finetuned", LABELS)}


@pytest.fixture(scope="module")
def sentences(glue_dir) -> list[str]:
    return [r["sentence"] for r in read_glue_tsv(glue_dir / "SST-2" / "dev.tsv", 24)]


@pytest.fixture(autouse=True)
def _torch_ops():
    ops.configure({"kernels": "torch"})
    yield
    ops.configure({"kernels": "auto"})


def predict_cfg(model: Path, **overrides) -> dict:
    cfg = {"model": str(model), "input": "-", "output": None, "format": None, "text_column": None}
    cfg.update(text_pair_column=None, keep_columns=True, bad_rows="keep", batch_size=8, max_length=None)
    cfg.update(impl={"kernels": "torch", "device": "cpu", "threads": 2})
    cfg.update(overrides)
    return cfg


def test_batched_length_sorted_predictions_match_one_at_a_time(exports, sentences):
    predictor = Predictor(exports["classifier"], {"device": "cpu", "kernels": "torch", "threads": 2})
    result = predictor(sentences, batch_size=8)
    assert result["probs"].shape == (len(sentences), 3)
    np.testing.assert_allclose(result["probs"].sum(axis=1), 1.0, atol=1e-5)
    assert result["prediction"] == [LABELS[i] for i in result["probs"].argmax(1)]
    single = np.concatenate([predictor.logits([s]) for s in sentences[:10]])
    np.testing.assert_allclose(predictor.logits(sentences, batch_size=4)[:10], single, atol=1e-5)


def test_file_in_file_out_keeps_columns_and_rows(tmp_path, exports, sentences):
    rows = [{"id": str(i), "text": s, "prediction": "old"} for i, s in enumerate(sentences[:20])]
    rows[3]["text"] = ""  # kept (bad_rows=keep): one output row per input row
    write_csv(tmp_path / "in.csv", rows)
    run_predict(
        predict_cfg(exports["classifier"], input=str(tmp_path / "in.csv"), output=str(tmp_path / "p.jsonl"))
    )
    out = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["id"] for r in out] == [str(i) for i in range(20)]
    assert all(r["prediction"] == "old" for r in out)  # the input column is never overwritten
    for r in out:
        probs = [r[f"prob_{name}"] for name in LABELS]
        assert abs(sum(probs) - 1) < 1e-4 and r["predicted_prediction"] == LABELS[int(np.argmax(probs))]
    expected = Predictor(exports["classifier"], {"device": "cpu", "kernels": "torch", "threads": 2})(
        [r["text"] for r in rows]
    )["prediction"]
    assert [r["predicted_prediction"] for r in out] == expected

    run_predict(
        predict_cfg(
            exports["classifier"],
            input=str(tmp_path / "in.csv"),
            output=str(tmp_path / "p.csv"),
            bad_rows="skip",
        )
    )
    assert len(list(csv.DictReader(open(tmp_path / "p.csv")))) == 19


def test_errors_name_the_problem(tmp_path, exports):
    write_csv(tmp_path / "in.csv", [{"sentence": "fine"}])
    with pytest.raises(ValueError, match="has no column 'text'.*'sentence'"):
        run_predict(predict_cfg(exports["classifier"], input=str(tmp_path / "in.csv")))
    with pytest.raises(ValueError, match="not a fine-tuned classifier"):
        run_predict(predict_cfg(exports["mlm"], input=str(tmp_path / "in.csv")))
    with pytest.raises(ValueError, match="unsupported file extension '.xlsx'"):
        cfg = predict_cfg(exports["classifier"], input=str(tmp_path / "in.csv"), output="p.xlsx")
        run_predict({**cfg, "text_column": "sentence"})


def test_batch_size_and_max_length_are_checked_up_front(tmp_path, exports):
    write_csv(tmp_path / "in.csv", [{"text": "fine"}])
    cfg = predict_cfg(exports["classifier"], input=str(tmp_path / "in.csv"))
    for bad in (0, -3, "8"):
        with pytest.raises(ValueError, match=rf"batch_size={bad!r} must be an integer >= 1"):
            run_predict({**cfg, "batch_size": bad})
    for bad in (100000, 129, 4, 0):
        with pytest.raises(ValueError, match=rf"max_length={bad} must be an integer between 8 and 128"):
            run_predict({**cfg, "max_length": bad})
    with pytest.raises(ValueError, match="batch_size=0"):
        Predictor(exports["classifier"], {"device": "cpu", "kernels": "torch", "threads": 2}).logits(
            ["fine"], batch_size=0
        )
    assert len(run_predict({**cfg, "max_length": 128, "batch_size": 1})["prediction"]) == 1


def test_impl_precision_reaches_the_model(tmp_path, exports, sentences):
    write_csv(tmp_path / "in.csv", [{"text": s} for s in sentences[:8]])
    cfg = predict_cfg(exports["classifier"], input=str(tmp_path / "in.csv"))
    probs = {}
    for precision in ("fp32", "bf16"):
        columns = run_predict({**cfg, "impl": {**cfg["impl"], "precision": precision}})
        probs[precision] = np.array([columns[f"prob_{n}"] for n in LABELS])
    default = run_predict(cfg)  # impl without precision: auto, which is fp32 on the CPU
    np.testing.assert_array_equal(np.array([default[f"prob_{n}"] for n in LABELS]), probs["fp32"])
    # bf16 autocast rounds the activations: close to fp32 but not identical
    assert np.abs(probs["bf16"] - probs["fp32"]).max() > 1e-6
    np.testing.assert_allclose(probs["bf16"], probs["fp32"], atol=0.05)
    with pytest.raises(ValueError, match="precision='fp8' is not one of"):
        run_predict({**cfg, "impl": {**cfg["impl"], "precision": "fp8"}})


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cramming.predict", *args, *CLI_IMPL]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)


@pytest.mark.slow
def test_cli_stdin_to_stdout(tmp_path, exports, sentences):
    proc = run_cli(f"model={exports['classifier']}", stdin="\n".join(sentences[:5]) + "\n\n")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))  # stdout holds only the CSV; logs go to stderr
    assert [r["text"] for r in rows] == sentences[:5]
    assert list(rows[0]) == ["text", "prediction"] + [f"prob_{n}" for n in LABELS]
    assert all(abs(sum(float(r[f"prob_{n}"]) for n in LABELS) - 1) < 1e-4 for r in rows)


def test_stdin_pairs_need_a_tab():
    examples = stdin_examples(["a man sleeps\tnobody sleeps\n", "\n", "x\ty\n"], pair=True)
    assert (examples.texts, examples.pairs, examples.lines) == (
        ["a man sleeps", "x"],
        ["nobody sleeps", "y"],
        [1, 3],
    )
    with pytest.raises(ValueError, match="stdin line 1: the model takes sentence pairs"):
        stdin_examples(["no tab here\n"], pair=True)
    with pytest.raises(ValueError, match="no input"):
        stdin_examples(["\n"], pair=False)


def test_regression_export_predicts_one_number_per_row(tmp_path, exports, sentences):
    from cramming.export.folder import load_model, load_tokenizer, read_config, save_export
    from cramming.models import build_classifier

    config = read_config(exports["mlm"])
    model = build_classifier(
        config["arch"], config["vocab_size"], 1, load_model(exports["mlm"]).encoder.state_dict()
    )
    save_export(model, load_tokenizer(exports["mlm"]), tmp_path / "reg", extra={"problem_type": "regression"})
    write_csv(tmp_path / "in.csv", [{"text": s} for s in sentences[:6]])
    columns = run_predict(
        predict_cfg(tmp_path / "reg", input=str(tmp_path / "in.csv"), output=str(tmp_path / "o.csv"))
    )
    assert list(columns) == ["text", "prediction"] and len(columns["prediction"]) == 6
    with torch.no_grad():
        ids = load_tokenizer(tmp_path / "reg").encode(sentences[0]).ids
        want = model.eval()(torch.tensor([ids]))["logits"].item()
    assert columns["prediction"][0] == pytest.approx(want, abs=1e-5)


def test_missing_options_take_predict_yamls_values():
    """Catches run_predict keeping defaults of its own (batch_size 64, bad_rows keep) beside conf/predict.yaml:
    the keys a Python caller leaves out are the YAML's, and ``model`` stays required."""
    from cramming.conf import read_yaml
    from cramming.predict import predict_options

    yaml = {k: v for k, v in read_yaml("predict.yaml").items() if k != "hydra"}
    assert predict_options({"model": "m"}) == {**yaml, "model": "m"}
    assert predict_options({"model": "m", "batch_size": 3})["batch_size"] == 3
    with pytest.raises(ValueError, match="model= is required"):
        predict_options({})
