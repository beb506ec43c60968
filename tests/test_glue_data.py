"""GLUE reading: TSV quirks (on conftest's generated glue_data folder), labels by name, hub records,
task planning, submissions."""

import csv
import shutil
import zipfile
from collections import Counter

import numpy as np
import pytest

from cramming.glue import glue_average, plan_tasks, resolve_settings, score_split
from cramming.glue import tasks as glue_data
from cramming.glue.submission import format_predictions, write_submission, zip_submission
from cramming.glue.tasks import AX, TASKS, hub_records_to_split, load_local, read_local_split

MNLI_HEADER = [
    "index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
    "sentence1_parse", "sentence2_parse", "sentence1", "sentence2",
]  # fmt: skip


def test_cola_has_no_header(glue_dir, glue_manifest):
    """Catches a header read as data (or the first row skipped as a header) in CoLA's headerless
    train/dev, labels not mapped by name, and the test file's header read as a row."""
    train = read_local_split(glue_dir, TASKS["cola"], "train", labelled=True)
    written = glue_manifest["CoLA/train"]
    assert len(train) == written["rows"]  # a header read as data (or skipped as header) would change this
    assert train.texts_a[0] == written["first"][0]
    assert Counter(train.labels) == written["labels"]
    dev = read_local_split(glue_dir, TASKS["cola"], "dev", labelled=True)
    assert (
        len(dev) == glue_manifest["CoLA/dev"]["rows"]
        and Counter(dev.labels) == glue_manifest["CoLA/dev"]["labels"]
    )
    test = read_local_split(glue_dir, TASKS["cola"], "test", labelled=False)  # the test file has a header
    assert (
        len(test) == glue_manifest["CoLA/test"]["rows"]
        and test.index[:2] == ["0", "1"]
        and test.labels is None
    )


def test_mrpc_bom_header_and_quote_none(glue_dir, glue_manifest):
    """Catches the BOM left on the first header name (no "Quality" column) and csv's default quoting,
    which merges rows at MRPC's unbalanced quote characters."""
    train = read_local_split(glue_dir, TASKS["mrpc"], "train", labelled=True)
    assert len(train) == glue_manifest["MRPC/train"]["rows"]
    assert Counter(train.labels) == glue_manifest["MRPC/train"]["labels"]
    quoted = [t for t in train.texts_a + train.texts_b if '"' in t]
    assert quoted, "MRPC has sentences with quote characters"
    dev = read_local_split(glue_dir, TASKS["mrpc"], "dev", labelled=True)
    assert dev.texts_b[0] == glue_manifest["MRPC/dev"]["first"][1] and dev.texts_b[0].startswith('" ')
    # With csv's default quoting the same file parses into a different number of rows.
    with open(glue_dir / "MRPC" / "train.tsv", encoding="utf-8-sig", newline="") as f:
        default_rows = list(csv.reader(f, delimiter="\t"))
    assert len(default_rows) - 1 != glue_manifest["MRPC/train"]["rows"]


def test_other_tasks_read_with_expected_counts(glue_dir, glue_manifest):
    """Every task of the benchmark reads with the rows and labels that were written: catches a wrong
    label column, STS-B scores not read as floats, MNLI's matched/mismatched files swapped or its three
    classes mapped wrongly, QQP's malformed row kept, and a test or diagnostic file not found."""
    sst2 = load_local(glue_dir, TASKS["sst2"])
    assert Counter(sst2.dev[""].labels) == glue_manifest["SST-2/dev"]["labels"]
    assert len(sst2.test["SST-2"]) == glue_manifest["SST-2/test"]["rows"]
    stsb = load_local(glue_dir, TASKS["stsb"])
    assert len(stsb.train) == glue_manifest["STS-B/train"]["rows"] and stsb.train.labels[:2] == [5.0, 3.8]
    assert all(isinstance(v, float) and 0.0 <= v <= 5.0 for v in stsb.dev[""].labels)
    rte = load_local(glue_dir, TASKS["rte"])
    assert set(rte.train.labels) == {"entailment", "not_entailment"}
    assert len(rte.test["RTE"]) == glue_manifest["RTE/test"]["rows"]
    wnli = load_local(glue_dir, TASKS["wnli"])
    assert Counter(wnli.dev[""].labels) == Counter(
        {"1": "entailment", "0": "not_entailment"}[v] for v in glue_manifest["WNLI/dev"]["labels"].elements()
    )
    mnli = load_local(glue_dir, TASKS["mnli"])
    assert Counter(mnli.train.labels) == glue_manifest["MNLI/train"]["labels"]
    assert set(mnli.train.labels) == {"entailment", "neutral", "contradiction"}
    for name in ("matched", "mismatched"):
        assert mnli.dev[name].texts_a[0] == glue_manifest[f"MNLI/dev_{name}"]["first"][0]
        assert Counter(mnli.dev[name].labels) == glue_manifest[f"MNLI/dev_{name}"]["labels"]
    assert mnli.dev["matched"].texts_a != mnli.dev["mismatched"].texts_a
    assert set(mnli.test) == {"MNLI-m", "MNLI-mm"}
    qqp = load_local(glue_dir, TASKS["qqp"])
    assert len(qqp.train) == glue_manifest["QQP/train"]["rows"]  # the malformed row is skipped
    assert Counter(qqp.dev[""].labels) == glue_manifest["QQP/dev"]["labels"]
    qnli = load_local(glue_dir, TASKS["qnli"])
    assert qnli.train.texts_a[0] == glue_manifest["QNLI/train"]["first"][0]
    assert len(qnli.dev[""]) == glue_manifest["QNLI/dev"]["rows"]
    assert len(load_local(glue_dir, AX).test["AX"]) == glue_manifest["diagnostic/diagnostic"]["rows"]


def _write_tsv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n", encoding="utf-8")


def _mnli_row(i, s1, s2, *labels):
    return [str(i), "1", f"{i}e", "fiction", "(x)", "(y)", "(X)", "(Y)", s1, s2, *labels]


@pytest.fixture
def mnli_dir(tmp_path):
    """A small MNLI folder in the official layout (string labels, label1..5 + gold_label on dev)."""
    root = tmp_path / "glue"
    labels = ["neutral", "contradiction", "entailment", "neutral"]
    rows = [_mnli_row(i, f'premise "{i}"', f"hypothesis {i}", lab, lab) for i, lab in enumerate(labels)]
    _write_tsv(root / "MNLI" / "train.tsv", MNLI_HEADER + ["label1", "gold_label"], rows)
    dev_header = MNLI_HEADER + [f"label{k}" for k in range(1, 6)] + ["gold_label"]
    dev_rows = [
        _mnli_row(i, "p", "h", *[lab] * 5, lab) for i, lab in enumerate(["contradiction", "entailment"])
    ]
    _write_tsv(root / "MNLI" / "dev_matched.tsv", dev_header, dev_rows)
    _write_tsv(root / "MNLI" / "dev_mismatched.tsv", dev_header, dev_rows[::-1])
    _write_tsv(root / "MNLI" / "test_matched.tsv", MNLI_HEADER, [_mnli_row(7, "p", "h")])
    return root


def test_mnli_labels_by_name_match_hub_ids(mnli_dir):
    spec = TASKS["mnli"]
    data = load_local(mnli_dir, spec)
    assert data.train.labels == ["neutral", "contradiction", "entailment", "neutral"]
    assert data.train.texts_a[0] == 'premise "0"'  # quotes kept (QUOTE_NONE)
    assert data.train.label_ids(spec) == [1, 2, 0, 1]  # indices follow spec.labels, by name
    assert data.dev["matched"].labels == ["contradiction", "entailment"]
    assert data.dev["mismatched"].labels == ["entailment", "contradiction"]
    assert list(data.test) == ["MNLI-m"] and data.test["MNLI-m"].index == ["7"]
    # The hub stores ints with its own ClassLabel names; whatever their order, names decide.
    hub_names = ["contradiction", "entailment", "neutral"]  # deliberately not spec order
    records = [{"premise": "p", "hypothesis": "h", "label": 2, "idx": 0},
               {"premise": "p", "hypothesis": "h", "label": 0, "idx": 1}]  # fmt: skip
    split = hub_records_to_split(spec, records, hub_names)
    assert split.labels == ["neutral", "contradiction"]
    assert split.label_ids(spec) == [1, 2]


def test_hub_records_conversion_for_pairs_singles_regression_and_test():
    rte = hub_records_to_split(
        TASKS["rte"],
        [{"sentence1": "a", "sentence2": "b", "label": 1, "idx": 5}],
        ["entailment", "not_entailment"],
    )
    assert (rte.texts_a, rte.texts_b, rte.labels, rte.index) == (["a"], ["b"], ["not_entailment"], ["5"])
    sst2 = hub_records_to_split(
        TASKS["sst2"], [{"sentence": "fine", "label": 1, "idx": 0}], ["negative", "positive"]
    )
    assert sst2.texts_b is None and sst2.labels == ["positive"]
    stsb = hub_records_to_split(
        TASKS["stsb"], [{"sentence1": "a", "sentence2": "b", "label": 3.2, "idx": 0}], None
    )
    assert stsb.labels == [3.2]
    test = hub_records_to_split(
        TASKS["qnli"], [{"question": "q", "sentence": "s", "label": -1, "idx": 9}], None
    )
    assert test.labels is None and test.index == ["9"]
    with pytest.raises(ValueError, match="not among"):
        hub_records_to_split(TASKS["rte"], [{"sentence1": "a", "sentence2": "b", "label": 0}], ["yes", "no"])


def test_unknown_label_in_tsv_is_an_error(tmp_path):
    _write_tsv(
        tmp_path / "RTE" / "train.tsv",
        ["index", "sentence1", "sentence2", "label"],
        [["0", "a", "b", "maybe"]],
    )
    with pytest.raises(ValueError, match="maybe"):
        read_local_split(tmp_path, TASKS["rte"], "train", labelled=True)


def test_missing_tasks_are_skipped_and_empty_glue_dir_is_an_error(glue_dir, tmp_path):
    partial = tmp_path / "partial"  # SST-2 whole, QNLI without its train file, no MNLI or QQP
    shutil.copytree(glue_dir / "SST-2", partial / "SST-2")
    shutil.copytree(glue_dir / "QNLI", partial / "QNLI")
    (partial / "QNLI" / "train.tsv").unlink()
    settings = resolve_settings({"glue_dir": str(partial), "tasks": ["sst2", "mnli", "qnli", "qqp"]})
    run, skipped = plan_tasks(settings)
    assert run == ["sst2"]
    assert set(skipped) == {"mnli", "qnli", "qqp"}
    assert "QNLI/train.tsv" in skipped["qnli"] and "QNLI/dev.tsv" not in skipped["qnli"]
    with pytest.raises(ValueError, match="holds none of the requested tasks"):
        plan_tasks(resolve_settings({"glue_dir": str(tmp_path), "tasks": ["cola"]}))
    with pytest.raises(ValueError, match="is not a folder"):
        plan_tasks(resolve_settings({"glue_dir": str(tmp_path / "nope")}))


def test_task_names_and_settings_are_checked():
    assert glue_data.check_task_names(["CoLA", "sst-2", "rte", "rte"]) == ["cola", "sst2", "rte"]
    with pytest.raises(ValueError, match="unknown GLUE task 'sts'.*accepted: cola"):
        glue_data.check_task_names(["sts"])
    with pytest.raises(ValueError, match="seeds"):
        resolve_settings({"seeds": 0})
    with pytest.raises(ValueError, match="impl.precision='half' is not one of"):
        resolve_settings({"impl": {"precision": "half"}})
    settings = resolve_settings({"name": "glue", "epochs": 2})  # conf/eval/glue.yaml keys are accepted
    assert settings["epochs"] == 2 and settings["lr"] == "auto" and settings["batch_size"] == 16
    with pytest.raises(ValueError, match="lr='fast'"):
        resolve_settings({"lr": "fast"})


def test_scores_and_average_coverage():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    scores, report = score_split(TASKS["mrpc"], [0, 1, 0, 0], logits)
    assert scores == {"f1": pytest.approx(100 * 2 / 3), "accuracy": pytest.approx(75.0)}
    assert report["confusion_matrix"] == [[2, 1], [0, 1]]
    mnli, _ = score_split(TASKS["mnli"], [0, 1], np.eye(3)[:2], "matched")
    assert mnli == {"accuracy_matched": pytest.approx(100.0)}
    average = glue_average({"SST-2": 80.0, "CoLA": 20.0, "WNLI": 99.0})
    assert average["value"] == pytest.approx(50.0) and average["count"] == 2 and average["of"] == 9
    assert average["label"].startswith("average over 2/9")


def test_submission_label_formats(tmp_path):
    two = np.array([[0.1, 0.9], [0.8, 0.2]])
    three = np.array([[0.0, 0.1, 0.9], [0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    assert format_predictions(TASKS["rte"], two) == ["not_entailment", "entailment"]
    assert format_predictions(TASKS["qnli"], two) == ["not_entailment", "entailment"]
    assert format_predictions(TASKS["cola"], two) == ["1", "0"]
    assert format_predictions(TASKS["mrpc"], two) == ["1", "0"]
    assert format_predictions(TASKS["wnli"], two) == ["1", "0"]
    assert format_predictions(TASKS["mnli"], three) == ["contradiction", "entailment", "neutral"]
    assert format_predictions(TASKS["stsb"], np.array([[-1.0], [2.5], [7.0]])) == ["0.000", "2.500", "5.000"]
    out = tmp_path / "sub"
    write_submission(out, "MNLI-m", TASKS["mnli"], ["0", "1", "2"], three)
    write_submission(out, "AX", TASKS["mnli"], ["0", "1", "2"], three)
    lines = (out / "MNLI-m.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and lines[1] == "0\tcontradiction" and len(lines) == 4
    with pytest.raises(ValueError, match="not one of"):
        write_submission(out, "MNLI", TASKS["mnli"], ["0"], three[:1])
    zipped = zip_submission(out, tmp_path / "submission.zip")
    assert sorted(zipfile.ZipFile(zipped).namelist()) == ["AX.tsv", "MNLI-m.tsv"]
    assert zip_submission(tmp_path / "empty") is None
