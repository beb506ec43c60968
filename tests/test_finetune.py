"""Custom-task fine-tuning: file reading, label mapping, bad input, and end-to-end runs on GLUE slices."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_export import CLI_IMPL, build_tiny_export, finetune_cfg, read_glue_tsv, write_csv

from cramming.export.folder import load_model, read_config
from cramming.finetune import job
from cramming.finetune.command import run_finetune
from cramming.finetune.labels import (
    canonical_label,
    class_weight_tensor,
    infer_task_type,
    prepare_targets,
    sort_labels,
)
from cramming.finetune.tabular import load_examples, read_table
from cramming.kernels import dispatch as ops

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tiny_corpus) -> Path:
    return build_tiny_export(tiny_corpus["train"], tmp_path_factory.mktemp("pretrained") / "model")


@pytest.fixture(autouse=True)
def _reset_ops():
    yield
    ops.configure({"kernels": "auto"})  # runs configure the PyTorch ops; leave the default for others


@pytest.fixture(scope="module")
def sst2(glue_dir) -> list[dict]:
    return read_glue_tsv(glue_dir / "SST-2" / "train.tsv", 400)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- labels and task type


def test_labels_are_mapped_by_name_and_sorted_numerically_or_alphabetically():
    assert [canonical_label(v) for v in (1, 1.0, "1", " 1 ", "1.0", True, "pos")] == [
        "1", "1", "1", "1", "1", "true", "pos",
    ]  # fmt: skip
    assert sort_labels(["10", "2", "1", "2"]) == ["1", "2", "10"]
    assert sort_labels(["pos", "neg", "neutral"]) == ["neg", "neutral", "pos"]
    assert sort_labels(["b", "10", "2"]) == ["10", "2", "b"]  # mixed: alphabetical


def test_task_type_auto_rule():
    stsb_like = [i / 5 for i in range(26)]  # 0.0 .. 5.0 in steps of 0.2
    assert infer_task_type(stsb_like) == "regression"
    assert infer_task_type([0.0, 1.0, 0.5] * 3) == "classification"  # few distinct values
    assert infer_task_type(list(range(50))) == "classification"  # whole numbers stay classes
    assert infer_task_type(["pos", "neg"]) == "classification"
    assert infer_task_type(list(range(50)), "regression") == "regression"
    with pytest.raises(ValueError, match="task_type='multi'"):
        infer_task_type([1], "multi")


def test_balanced_class_weights_match_scikit_learn():
    from sklearn.utils.class_weight import compute_class_weight

    ids = [0] * 6 + [1] * 3 + [2] * 1
    got = class_weight_tensor("balanced", ids, ["a", "b", "c"]).numpy()
    want = compute_class_weight("balanced", classes=np.arange(3), y=np.asarray(ids))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert class_weight_tensor("none", ids, ["a", "b", "c"]) is None
    assert class_weight_tensor([1, 2, 3], ids, ["a", "b", "c"]).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="needs 3 positive numbers"):
        class_weight_tensor([1, 2], ids, ["a", "b", "c"])
    with pytest.raises(ValueError, match="class_weights='heavy'"):
        class_weight_tensor("heavy", ids, ["a", "b", "c"])


# ---------------------------------------------------------------- reading files


def test_every_format_reads_the_same_rows(tmp_path):
    rows = [{"text": 'say "hi", then go', "label": "pos"}, {"text": "it's 'bad'", "label": "neg"}]
    write_csv(tmp_path / "a.csv", rows)
    (tmp_path / "a.tsv").write_text("text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in rows))
    write_jsonl(tmp_path / "a.jsonl", rows)
    (tmp_path / "a.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    for name in ("a.csv", "a.tsv", "a.jsonl", "a.json", "a.parquet"):
        table = read_table(tmp_path / name)
        assert table.columns == {"text": [r["text"] for r in rows], "label": ["pos", "neg"]}, name


BAD_FILES = {
    "missing column": ("d.csv", "sentence,label\nhello,pos\n", "has no column 'text'.*'sentence'"),
    "empty file": ("d.csv", "", "is empty"),
    "header only": ("d.csv", "text,label\n", "no data rows"),
    "parquet named csv": ("d.csv", b"PAR1\x00\x00", "is a Parquet file, not CSV"),
    "csv named parquet": ("d.parquet", "text,label\nhi,pos\n", "not a Parquet file"),
    "csv named jsonl": ("d.jsonl", "text,label\nhi,pos\n", "line 1 is not JSON"),
    "jsonl named csv": ("d.csv", '{"text": "hi", "label": "pos"}\n', "looks like JSON"),
    "tsv named csv": ("d.csv", "text\tlabel\nhi\tpos\n", "looks tab-separated"),
    "not utf-8": ("d.tsv", b"text\tlabel\ncaf\xe9\tpos\n", "not UTF-8"),
    "unknown extension": ("d.xlsx", "x", "unsupported file extension '.xlsx'.*.csv"),
    "no such file": (None, None, "no such file"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_give_clear_errors(tmp_path, case):
    name, content, message = BAD_FILES[case]
    path = tmp_path / (name or "absent.csv")
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=message) as err:
        load_examples(path, "text", None, "label")
    assert str(path) in str(err.value)


def test_bad_rows_are_counted_and_skipped_or_raise(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("text,label\ngood,pos\n,neg\n   ,neg\nno label,\ntoo,many,fields\nfine,neg\n")
    examples = load_examples(path, "text", None, "label", bad_rows="skip")
    assert examples.texts == ["good", "fine"] and examples.labels == ["pos", "neg"]
    assert examples.skipped == 4 and examples.lines == [2, 7]
    with pytest.raises(ValueError, match=r"rows.csv line 6: 3 fields where the header has 2"):
        load_examples(path, "text", None, "label", bad_rows="error")
    path.write_text("text,label\ngood,pos\n,neg\n")
    with pytest.raises(ValueError, match=r"rows.csv line 3: empty text in column 'text'.*bad_rows=skip"):
        load_examples(path, "text", None, "label", bad_rows="error")
    jsonl = write_jsonl(tmp_path / "rows.jsonl", [{"text": "a", "label": 1}, {"text": "", "label": 0}])
    with jsonl.open("a") as f:
        f.write("not json\n")
    assert load_examples(jsonl, "text", None, "label").texts == ["a"]
    with pytest.raises(ValueError, match="line 3: not valid JSON"):
        load_examples(jsonl, "text", None, "label", bad_rows="error")
    all_bad = write_jsonl(tmp_path / "empty_texts.jsonl", [{"text": "", "label": 1}])
    with pytest.raises(ValueError, match="no usable rows left"):
        load_examples(all_bad, "text", None, "label")


def test_unseen_validation_label_is_an_error_or_a_counted_skip(tmp_path):
    train = write_csv(tmp_path / "train.csv", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}])
    dev = write_csv(tmp_path / "dev.csv", [{"text": "c", "label": "pos"}, {"text": "d", "label": "neutral"}])
    for bad_rows in ("error", "skip"):
        cfg = finetune_cfg(model="unused", train_file=str(train), bad_rows=bad_rows)
        splits = {
            name: load_examples(p, "text", None, "label")
            for name, p in (("train", train), ("validation", dev))
        }
        if bad_rows == "error":
            with pytest.raises(
                ValueError, match=r"dev.csv line 3: label 'neutral' never appears.*\['neg', 'pos'\]"
            ):
                prepare_targets(cfg, splits)
            continue
        task, labels, prepared = prepare_targets(cfg, splits)
        examples, ids = prepared["validation"]
        assert (task, labels, ids, examples.skipped) == ("classification", ["neg", "pos"], [1], 1)


def test_configuration_errors_name_the_option(tmp_path, tiny_model):
    train = write_csv(tmp_path / "t.csv", [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}])
    with pytest.raises(ValueError, match="single label"):
        run_finetune(finetune_cfg(model=str(tiny_model), train_file=str(train), out_dir=str(tmp_path / "o")))
    with pytest.raises(ValueError, match="bad_rows='drop'"):
        run_finetune(finetune_cfg(model=str(tiny_model), train_file=str(train), bad_rows="drop"))
    with pytest.raises(ValueError, match="max_length=1000 exceeds"):
        run_finetune(finetune_cfg(model=str(tiny_model), train_file=str(train), max_length=1000))
    with pytest.raises(ValueError, match="not an exported cramming model"):
        run_finetune(finetune_cfg(model=str(tmp_path), train_file=str(train)))


def test_out_dir_never_overwrites_a_pretrained_export(tmp_path, tiny_model):
    train = write_csv(tmp_path / "t.csv", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    before = {p.name: p.read_bytes() for p in tiny_model.iterdir()}
    for out_dir in (tiny_model, tiny_model / ".." / tiny_model.name):
        with pytest.raises(ValueError, match="is the model folder") as info:
            run_finetune(finetune_cfg(model=str(tiny_model), train_file=str(train), out_dir=str(out_dir)))
        assert str(tiny_model) in str(info.value)
    other = tmp_path / "other_mlm"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "cramming-bert", "task": "mlm"}))
    with pytest.raises(ValueError, match="already holds an export with task 'mlm'") as info:
        run_finetune(finetune_cfg(model=str(tiny_model), train_file=str(train), out_dir=str(other)))
    assert str(other) in str(info.value) and str(tiny_model) in str(info.value)
    assert {p.name: p.read_bytes() for p in tiny_model.iterdir()} == before


# ---------------------------------------------------------------- end to end


def run_cli(module: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, *args, *CLI_IMPL]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)


@pytest.mark.slow
def test_cli_sst2_binary_end_to_end(tmp_path, tiny_model, sst2):
    rows = [{"text": r["sentence"], "label": ["negative", "positive"][int(r["label"])]} for r in sst2]
    train = write_csv(tmp_path / "train.csv", rows[:96])
    dev = write_csv(tmp_path / "dev.csv", rows[96:144])
    test = write_csv(tmp_path / "test.csv", [{"text": r["text"]} for r in rows[144:168]])
    out = tmp_path / "finetuned"
    proc = run_cli(
        "cramming.finetune", f"model={tiny_model}", f"train_file={train}", f"validation_file={dev}",
        "text_column=text", "label_column=label", f"test_file={test}", f"out_dir={out}",
        "epochs=1", "batch_size=32", "seed=3", "max_length=48",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout

    config = read_config(out)
    assert config["labels"] == ["negative", "positive"]
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["problem_type"] == "single_label_classification" and config["num_labels"] == 2
    model = load_model(out)  # strict keys
    assert model.num_labels == 2

    metrics = json.loads((out / "validation_metrics.json").read_text())
    for key in (
        "accuracy",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "weighted_precision",
        "weighted_f1",
    ):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert set(metrics["per_class"]) == {"negative", "positive"}
    confusion = json.loads((out / "validation_confusion.json").read_text())
    assert np.asarray(confusion["matrix"]).sum() == metrics["rows"] == 48
    assert (out / "validation_confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "negative" in (out / "validation_report.txt").read_text()

    # The confusion matrix and accuracy agree with the per-row predictions file.
    with open(out / "validation_predictions.csv", newline="") as f:
        preds = list(csv.DictReader(f))
    assert len(preds) == 48
    for row in preds:
        assert abs(float(row["prob_negative"]) + float(row["prob_positive"]) - 1) < 1e-4
    accuracy = np.mean([r["prediction"] == r["label"] for r in preds])
    assert accuracy == pytest.approx(metrics["accuracy"])
    pairs = Counter((r["label"], r["prediction"]) for r in preds)
    assert confusion["matrix"][0][1] == pairs[("negative", "positive")]
    # The test file has no labels: predictions only, no metrics.
    assert not (out / "test_metrics.json").exists()
    assert len(list(csv.DictReader(open(out / "test_predictions.csv")))) == 24
    assert json.loads((out / "metrics.json").read_text())["test"] is None


@pytest.mark.slow
def test_three_classes_integer_labels_jsonl_and_class_weights(tmp_path, tiny_model, sst2, monkeypatch):
    """Three classes (sentiment + a length bucket), integer labels sorted numerically, balanced weights."""

    def label(row):  # 2 = negative, 10 = short positive, 1 = long positive
        return 2 if row["label"] == "0" else (10 if len(row["sentence"].split()) <= 8 else 1)

    rows = [{"sentence": r["sentence"], "y": label(r)} for r in sst2]
    train = write_jsonl(tmp_path / "train.jsonl", rows[:96])
    dev = write_jsonl(tmp_path / "dev.jsonl", rows[96:144])
    seen = {}
    real_finetune = job.finetune

    def spy(model, data, settings, runtime, seed, class_weights=None):
        seen["weights"], seen["labels"] = class_weights, data.labels
        return real_finetune(model, data, settings, runtime, seed=seed, class_weights=class_weights)

    monkeypatch.setattr(job, "finetune", spy)
    cfg = finetune_cfg(
        model=str(tiny_model), train_file=str(train), validation_file=str(dev), text_column="sentence",
        label_column="y", out_dir=str(tmp_path / "out"), epochs=1, batch_size=32, class_weights="balanced", max_length=48,
    )  # fmt: skip
    summary = run_finetune(cfg)
    assert summary["labels"] == ["1", "2", "10"]
    counts = np.bincount(seen["labels"], minlength=3)
    assert counts.tolist() == [sum(label(r) == v for r in sst2[:96]) for v in (1, 2, 10)]
    np.testing.assert_allclose(seen["weights"].numpy(), 96 / (3 * counts), rtol=1e-6)
    confusion = json.loads((tmp_path / "out" / "validation_confusion.json").read_text())
    assert np.asarray(confusion["matrix"]).shape == (3, 3) and confusion["labels"] == ["1", "2", "10"]
    assert np.asarray(confusion["matrix"]).sum(axis=1).tolist() == [
        sum(label(r) == v for r in sst2[96:144]) for v in (1, 2, 10)
    ]


@pytest.mark.slow
def test_sentence_pairs_from_parquet(tmp_path, tiny_model, glue_dir):
    rows = read_glue_tsv(glue_dir / "RTE" / "train.tsv", 64)
    table = {k: [r[k] for r in rows] for k in ("sentence1", "sentence2", "label")}
    pq.write_table(pa.table(table), tmp_path / "rte.parquet")
    cfg = finetune_cfg(
        model=str(tiny_model), train_file=str(tmp_path / "rte.parquet"), validation_file=str(tmp_path / "rte.parquet"),
        text_column="sentence1", text_pair_column="sentence2", out_dir=str(tmp_path / "out"), epochs=1,
        batch_size=32, max_length=64,
    )  # fmt: skip
    summary = run_finetune(cfg)
    assert summary["labels"] == ["entailment", "not_entailment"]
    assert read_config(tmp_path / "out")["text_pair_column"] == "sentence2"
    preds = list(csv.DictReader(open(tmp_path / "out" / "validation_predictions.csv")))
    assert preds[0]["text_pair"] == rows[0]["sentence2"] and len(preds) == 64


@pytest.mark.slow
def test_float_labels_make_a_regression_task(tmp_path, tiny_model, glue_dir):
    rows = read_glue_tsv(glue_dir / "STS-B" / "train.tsv", 80)
    path = tmp_path / "stsb.tsv"
    path.write_text(
        "a\tb\tscore\n" + "".join(f"{r['sentence1']}\t{r['sentence2']}\t{r['score']}\n" for r in rows)
    )
    cfg = finetune_cfg(
        model=str(tiny_model), train_file=str(path), validation_file=str(path), text_column="a",
        text_pair_column="b", label_column="score", out_dir=str(tmp_path / "out"), epochs=1, batch_size=40,
    )  # fmt: skip
    summary = run_finetune(cfg)
    assert summary["task_type"] == "regression" and summary["labels"] is None
    assert set(summary["validation"]) >= {"pearson", "spearman", "mse"}
    config = read_config(tmp_path / "out")
    assert config["num_labels"] == 1 and config["problem_type"] == "regression" and "labels" not in config
    assert not (tmp_path / "out" / "validation_confusion.png").exists()


def test_cli_bad_input_is_one_clear_line_not_a_traceback(tmp_path, tiny_model, monkeypatch, capsys):
    """The Hydra entry point turns a ValueError into one `error:` line on stderr and exit status 2."""
    from cramming import finetune

    train = write_csv(
        tmp_path / "train.csv", [{"sentence": "a", "label": "x"}, {"sentence": "b", "label": "y"}]
    )
    argv = [
        "finetune",
        f"model={tiny_model}",
        f"train_file={train}",
        "text_column=text",
        "label_column=label",
    ]
    root = logging.getLogger()  # Hydra configures logging in-process; restore it for the other tests
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(sys, "argv", argv + CLI_IMPL)
    with pytest.raises(SystemExit) as exit_info:
        finetune.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "has no column 'text'" in err and "'sentence'" in err
    assert "Traceback" not in err
    monkeypatch.setattr(sys, "argv", ["finetune", f"train_file={train}"])
    with pytest.raises(SystemExit):
        finetune.main()
    assert "missing required option(s): model=..." in capsys.readouterr().err
