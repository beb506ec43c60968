"""Labels of your own files: names, task type, class indices or regression targets, class weights.

Labels may be strings or integers; they are mapped by name (``canonical_label``), sorted
numerically when every label is a number and alphabetically otherwise (``sort_labels``). A float
label with many values makes a regression task (``infer_task_type``). A label training never saw,
or a non-numeric regression target, is a bad row: skipped and counted, or an error (``bad_rows``).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from cramming.finetune.tabular import Examples, bad_row

log = logging.getLogger("cramming.finetune")

TASK_TYPES = ("auto", "classification", "regression")
_INTEGER = re.compile(r"[+-]?\d+(\.0*)?")


def canonical_label(value: object) -> str:
    """A label's name: ``1``, ``1.0`` and ``"1"`` are all ``"1"``; booleans are ``true``/``false``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if _INTEGER.fullmatch(text):
        return str(int(float(text)))
    return text


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def sort_labels(names: Sequence[str]) -> list[str]:
    """Numerically when every name is a number (so 2 < 10), else alphabetically."""
    unique = set(names)
    if all(_number(n) is not None for n in unique):
        return sorted(unique, key=lambda n: (float(n), n))
    return sorted(unique)


def infer_task_type(values: Sequence, task_type: str = "auto") -> str:
    """``regression`` for float labels with many values, ``classification`` otherwise.

    With ``auto``: regression when every label is a number, at least one is not a whole
    number, and there are more than 10 distinct values (e.g. STS-B scores). Integer labels,
    or a few float values such as 0.0/1.0, stay classes.
    """
    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type={task_type!r} is not one of {list(TASK_TYPES)}")
    if task_type != "auto":
        return task_type
    numbers = [_number(v) for v in values]
    if any(n is None for n in numbers):
        return "classification"
    fractional = any(not n.is_integer() for n in numbers)
    return "regression" if fractional and len(set(numbers)) > 10 else "classification"


def map_labels(examples: Examples, label2id: Mapping[str, int], bad_rows: str) -> tuple[Examples, list[int]]:
    """Class indices by name; a label training never saw is a bad row (skipped or an error)."""
    keep, ids = [], []
    for value, line in zip(examples.labels, examples.lines):
        name = canonical_label(value)
        keep.append(name in label2id)
        if keep[-1]:
            ids.append(label2id[name])
        else:
            reason = f"label {name!r} never appears in the training file; known labels: {list(label2id)}"
            bad_row(examples.path, line, reason, bad_rows, keep.count(False) - 1)
    if not all(keep):
        log.warning("%s: skipped %d row(s) with labels unseen in training", examples.path, keep.count(False))
    return examples.keep(keep), ids


def regression_targets(examples: Examples, bad_rows: str) -> tuple[Examples, list[float]]:
    keep, targets = [], []
    for value, line in zip(examples.labels, examples.lines):
        number = _number(value)
        keep.append(number is not None)
        if number is None:
            reason = f"label {value!r} is not a number (task_type=regression)"
            bad_row(examples.path, line, reason, bad_rows, keep.count(False) - 1)
        else:
            targets.append(number)
    if not all(keep):
        log.warning("%s: skipped %d row(s) with non-numeric labels", examples.path, keep.count(False))
    return examples.keep(keep), targets


def class_weight_tensor(spec: object, ids: Sequence[int], labels: Sequence[str]) -> torch.Tensor | None:
    """``none``, ``balanced`` (n / (k * n_c), as scikit-learn) or one weight per label, in label order."""
    if spec is None or (isinstance(spec, str) and spec.lower() == "none"):
        return None
    k = len(labels)
    if isinstance(spec, str) and spec.lower() == "balanced":
        counts = np.bincount(np.asarray(ids), minlength=k).astype(np.float64)
        weights = len(ids) / (k * np.maximum(counts, 1.0))
    elif isinstance(spec, Sequence) and not isinstance(spec, str):
        weights = np.asarray([float(w) for w in spec])
        if len(weights) != k or (weights <= 0).any():
            raise ValueError(
                f"class_weights={list(spec)} needs {k} positive numbers, one per label {list(labels)}"
            )
    else:
        raise ValueError(f"class_weights={spec!r} is not one of none, balanced, or a list of {k} numbers")
    log.info("class weights: %s", {name: round(float(w), 4) for name, w in zip(labels, weights)})
    return torch.tensor(weights, dtype=torch.float32)


def prepare_targets(cfg: Mapping, splits: dict[str, Examples]) -> tuple[str, list[str] | None, dict]:
    """Task type, label names (None for regression) and per-split (examples, targets)."""
    train = splits["train"]
    task = infer_task_type(train.labels, cfg["task_type"])
    prepared = {}
    if task == "regression":
        for name, ex in splits.items():
            prepared[name] = regression_targets(ex, cfg["bad_rows"]) if ex.labels is not None else (ex, None)
        return task, None, prepared
    labels = sort_labels([canonical_label(v) for v in train.labels])
    if len(labels) < 2:
        raise ValueError(
            f"{train.path}: column {cfg['label_column']!r} holds a single label {labels}; "
            "classification needs at least 2 (use task_type=regression for numeric targets)"
        )
    label2id = {name: i for i, name in enumerate(labels)}
    for name, ex in splits.items():
        prepared[name] = map_labels(ex, label2id, cfg["bad_rows"]) if ex.labels is not None else (ex, None)
    counts = Counter(prepared["train"][1])
    log.info("%d labels: %s", len(labels), {labels[i]: counts[i] for i in range(len(labels))})
    return task, labels, prepared
