"""cramming.finetune.metrics against values worked out by hand."""

import math

import numpy as np
import pytest

from cramming.finetune.metrics import (
    accuracy,
    classification_metrics,
    f1_binary,
    matthews,
    pearson,
    plot_confusion,
    regression_metrics,
    spearman,
)

# y_true vs y_pred: TP=2, TN=2, FP=0, FN=1
Y_TRUE = [0, 1, 1, 0, 1]
Y_PRED = [0, 1, 0, 0, 1]


def test_accuracy_f1_matthews_by_hand():
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(4 / 5)
    # precision 2/2, recall 2/3 -> F1 = 2 * 1 * (2/3) / (1 + 2/3) = 0.8
    assert f1_binary(Y_TRUE, Y_PRED) == pytest.approx(0.8)
    # negative class: precision 2/3, recall 1 -> F1 = 0.8 as well; a different split checks pos_label
    assert f1_binary([1, 1, 0, 0], [1, 0, 0, 0], positive=1) == pytest.approx(2 / 3)
    assert f1_binary([1, 1, 0, 0], [1, 0, 0, 0], positive=0) == pytest.approx(0.8)
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 4 / sqrt(2*3*2*3) = 2/3
    assert matthews(Y_TRUE, Y_PRED) == pytest.approx(2 / 3)
    assert matthews([0, 1, 0, 1], [1, 1, 1, 1]) == 0.0  # one predicted class: defined as 0


def test_correlations_by_hand():
    x, y = [1, 2, 3, 4], [2, 4, 6, 9]
    # deviations (-1.5,-.5,.5,1.5) and (-3.25,-1.25,.75,3.75): r = 11.5 / sqrt(5 * 26.75)
    assert pearson(x, y) == pytest.approx(11.5 / math.sqrt(5 * 26.75))
    assert spearman(x, y) == pytest.approx(1.0)
    # rank differences (0, -1, 1, 0): rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert pearson([1, 2, 3], [5, 5, 5]) == 0.0  # constant predictions carry no correlation
    reg = regression_metrics([0.0, 1.0, 2.0], [0.0, 1.0, 4.0])
    assert reg["mse"] == pytest.approx(4 / 3)


def test_classification_report_per_class_and_confusion():
    labels = ["entailment", "neutral", "contradiction"]
    y_true = [0, 0, 1, 2, 2, 2]
    y_pred = [0, 1, 1, 2, 0, 2]
    report = classification_metrics(y_true, y_pred, labels)
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert report["accuracy"] == pytest.approx(4 / 6)
    ent, neu, con = (report["per_class"][n] for n in labels)
    assert (ent["precision"], ent["recall"], ent["support"]) == (pytest.approx(0.5), pytest.approx(0.5), 2)
    assert (neu["precision"], neu["recall"]) == (pytest.approx(0.5), pytest.approx(1.0))
    assert con["precision"] == pytest.approx(1.0) and con["recall"] == pytest.approx(2 / 3)
    assert con["f1"] == pytest.approx(0.8)
    assert report["macro_f1"] == pytest.approx(np.mean([0.5, 2 / 3, 0.8]))
    # a class absent from the data still gets its row and column
    small = classification_metrics([0, 0], [0, 0], labels)
    assert small["confusion_matrix"] == [[2, 0, 0], [0, 0, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, 3], [0, 1], labels)


def test_confusion_png(tmp_path):
    path = plot_confusion([[5, 1], [2, 7]], ["neg", "pos"], tmp_path / "c" / "x.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
