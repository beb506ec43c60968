"""Classification and regression metrics (scikit-learn / scipy) and the confusion-matrix plot.

Every function takes plain sequences or numpy arrays. Classification functions take class
indices (``y_true``, ``y_pred``) plus the label names those indices stand for, so reports
are keyed by name. Values are fractions in [0, 1] (correlations in [-1, 1]); GLUE code
scales them to percent where it reports them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    return float(skm.accuracy_score(y_true, y_pred))


def f1_binary(y_true: Sequence[int], y_pred: Sequence[int], positive: int = 1) -> float:
    """F1 of the positive class (MRPC, QQP: positive = paraphrase/duplicate = index 1)."""
    return float(skm.f1_score(y_true, y_pred, pos_label=positive, average="binary", zero_division=0))


def matthews(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Matthews correlation; 0 when a row or column of the confusion matrix is empty."""
    with warnings.catch_warnings():  # sklearn warns about a single class; the answer (0) is defined
        warnings.simplefilter("ignore")
        return float(skm.matthews_corrcoef(y_true, y_pred))


def _correlation(fn, x: Sequence[float], y: Sequence[float]) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0  # undefined for constant input; a constant predictor carries no correlation
    value = float(fn(x, y)[0])
    return 0.0 if math.isnan(value) else value


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    return _correlation(stats.pearsonr, x, y)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return _correlation(stats.spearmanr, x, y)


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict:
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    return {
        "pearson": pearson(y_true, y_pred),
        "spearman": spearman(y_true, y_pred),
        "mse": float(np.mean((y_true - y_pred) ** 2)) if len(y_true) else 0.0,
    }


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict:
    """Accuracy, macro F1, Matthews, per-class precision/recall/F1/support and the confusion matrix.

    ``labels[i]`` names class index ``i``. The confusion matrix has true classes as rows and
    predicted classes as columns, over every label (also those absent from the data).
    """
    labels = list(labels)
    index = list(range(len(labels)))
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        if len(values) and (values.min() < 0 or values.max() >= len(labels)):
            raise ValueError(f"{name} holds class indices outside 0..{len(labels) - 1} (labels {labels})")
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=index, zero_division=0
    )
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(labels)
    }
    return {
        "accuracy": accuracy(y_true, y_pred) if len(y_true) else 0.0,
        "macro_f1": float(np.mean(f1)) if len(labels) else 0.0,
        "matthews": matthews(y_true, y_pred) if len(y_true) else 0.0,
        "per_class": per_class,
        "labels": labels,
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=index).tolist(),
    }


def plot_confusion(
    matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path, title: str
) -> Path:
    """Save the confusion matrix (rows true, columns predicted) as a PNG with counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    size = max(3.0, 1.1 * len(labels) + 1.5)
    fig, ax = plt.subplots(figsize=(size + 0.8, size))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=30, ha="right")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            color = "white" if matrix[i, j] > threshold else "black"
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=color)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
