"""Fine-tune a pretrained export on your own labelled files, evaluate it, and export the result.

    python -m cramming.finetune model=outputs/RUN/model train_file=train.csv validation_file=dev.csv \\
        text_column=text label_column=label [text_pair_column=...] [test_file=...] [out_dir=...]

Labels may be strings or integers; they are mapped by name, sorted (numerically when every
label is a number, alphabetically otherwise) and saved with the model in config.json as
``labels`` / ``id2label`` / ``label2id``. A float label makes a regression task (see
``infer_task_type``). Training, prediction and metrics use the shared engine in
``cramming.classify`` and ``cramming.metrics``. Every option is in conf/finetune.yaml.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from cramming import classify, metrics
from cramming.commands import cli_errors
from cramming.conf import CONF_PATH
from cramming.export.folder import CONFIG, FRAMING, save_export
from cramming.models import CLASSIFIER_HEADS
from cramming.report import report_at_end
from cramming.runtime import make_runtime
from cramming.tabular import Examples, bad_row, check_bad_rows, load_examples, write_table
from cramming.tracking import log_to_file, setup_logging

log = logging.getLogger("cramming.finetune")

TASK_TYPES = ("auto", "classification", "regression")
# The training settings recorded in the fine-tuned export's config.json.
FINETUNE_RECORD = ("train_file", "epochs", "lr", "batch_size", "seed", "class_weights", "weight_decay", "betas",
                   "eps", "grad_clip", "warmup_fraction", "dropout", "attention_dropout", "head")  # fmt: skip
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


def check_config(cfg: Mapping) -> None:
    check_bad_rows(cfg["bad_rows"])
    if cfg["task_type"] not in TASK_TYPES:
        raise ValueError(f"task_type={cfg['task_type']!r} is not one of {list(TASK_TYPES)}")
    if cfg["lr"] != "auto":
        classify.resolve_lr(cfg["lr"], classify.REFERENCE_WIDTH)
    for key in ("epochs", "batch_size", "max_length", "eval_batch_size"):
        if not isinstance(cfg[key], (int, float)) or cfg[key] <= 0:
            raise ValueError(f"{key}={cfg[key]!r} must be a positive number")
    for key in ("model", "train_file", "text_column", "label_column"):
        if not cfg.get(key):
            raise ValueError(f"{key}= is required (see conf/finetune.yaml)")
    classify.check_optimizer_settings(cfg["betas"], cfg["eps"], cfg["weight_decay"], cfg["grad_clip"])
    for key in ("dropout", "attention_dropout"):
        if not isinstance(cfg[key], (int, float)) or not 0 <= cfg[key] < 1:
            raise ValueError(f"{key}={cfg[key]!r} must be a number in [0, 1)")
    if cfg["head"] != "auto" and cfg["head"] not in CLASSIFIER_HEADS:
        raise ValueError(f"head={cfg['head']!r} is not one of {['auto', *CLASSIFIER_HEADS]}")


def default_out_dir(model_dir: str | Path) -> Path:
    """``<model>/../finetuned``: outputs/RUN/model -> outputs/RUN/finetuned."""
    return Path(model_dir).resolve().parent / "finetuned"


def check_out_dir(out_dir: Path, model_dir: Path) -> None:
    """Never overwrite the pretrained export: refuse the model folder itself, or a folder holding a
    non-classifier export (an earlier fine-tuned classifier there may be replaced)."""
    if out_dir.resolve() == model_dir.resolve():
        raise ValueError(
            f"out_dir={out_dir} is the model folder {model_dir}; fine-tuning would overwrite the pretrained "
            f"export. Choose another out_dir (default: {default_out_dir(model_dir)})"
        )
    config_file = out_dir / CONFIG
    if not config_file.is_file():
        return
    try:
        task = json.loads(config_file.read_text()).get("task")
    except (OSError, ValueError, AttributeError):
        task = "unreadable"
    if task != "classification":
        raise ValueError(
            f"out_dir={out_dir} already holds an export with task {task!r} ({config_file}), not a fine-tuned "
            f"classifier; fine-tuning {model_dir} would overwrite it. Choose another out_dir"
        )


def read_split(cfg: Mapping, path: str, labels_required: bool) -> Examples:
    return load_examples(
        path,
        cfg["text_column"],
        cfg.get("text_pair_column"),
        cfg["label_column"],
        cfg["bad_rows"],
        labels_required,
    )


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


def classification_summary(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict:
    """The engine's metrics plus macro and weighted precision/recall/F1 and a text report."""
    from sklearn import metrics as skm

    result = metrics.classification_metrics(y_true, y_pred, labels)  # what classify.score_logits gives
    index = list(range(len(labels)))
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=index, average=average, zero_division=0
        )
        result.update(
            {f"{average}_precision": float(p), f"{average}_recall": float(r), f"{average}_f1": float(f)}
        )
    result["report"] = skm.classification_report(
        y_true, y_pred, labels=index, target_names=list(labels), digits=4, zero_division=0
    )
    return result


def prediction_columns(examples: Examples, logits: np.ndarray, labels: list[str] | None) -> dict[str, list]:
    """Per-row output: the file's line, the texts, the prediction and (classification) one probability per label."""
    columns: dict[str, list] = {"line": examples.lines, "text": examples.texts}
    if examples.pairs is not None:
        columns["text_pair"] = examples.pairs
    if examples.labels is not None:
        columns["label"] = [canonical_label(v) if labels else v for v in examples.labels]
    if labels is None:
        columns["prediction"] = [float(x) for x in logits[:, 0]]
        return columns
    probs = classify.softmax(logits)
    columns["prediction"] = [labels[i] for i in probs.argmax(-1)]
    for i, name in enumerate(labels):
        columns[f"prob_{name}"] = [round(float(p), 6) for p in probs[:, i]]
    return columns


def evaluate_split(
    split: str,
    examples: Examples,
    targets: list | None,
    logits: np.ndarray,
    labels: list[str] | None,
    out_dir: Path,
) -> dict | None:
    """Write ``<split>_predictions.csv`` and, with targets, metrics JSON, report and confusion matrix."""
    write_table(prediction_columns(examples, logits, labels), out_dir / f"{split}_predictions.csv")
    if targets is None:
        return None
    if labels is None:
        result = classify.score_logits(targets, logits, None)
        log.info(
            "%s: pearson %.4f | spearman %.4f | mse %.4f",
            split,
            result["pearson"],
            result["spearman"],
            result["mse"],
        )
    else:
        result = classification_summary(targets, logits.argmax(-1), labels)
        (out_dir / f"{split}_report.txt").write_text(result.pop("report"))
        confusion = {
            "labels": labels,
            "rows": "true",
            "columns": "predicted",
            "matrix": result["confusion_matrix"],
        }
        (out_dir / f"{split}_confusion.json").write_text(json.dumps(confusion, indent=2) + "\n")
        metrics.plot_confusion(result["confusion_matrix"], labels, out_dir / f"{split}_confusion.png", split)
        log.info(
            "%s: accuracy %.4f | macro F1 %.4f | weighted F1 %.4f",
            split, result["accuracy"], result["macro_f1"], result["weighted_f1"],
        )  # fmt: skip
    result.update(rows=len(examples), skipped_rows=examples.skipped, file=examples.path)
    (out_dir / f"{split}_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def run_finetune(cfg: Mapping) -> dict:
    """Fine-tune, evaluate and export as configured (keys of conf/finetune.yaml); returns the summary."""
    check_config(cfg)
    model_dir = Path(cfg["model"])
    pretrained = classify.load_pretrained(model_dir)  # config, tokenizer and encoder, read once
    max_pos = pretrained.arch["max_position_embeddings"]
    if cfg["max_length"] > max_pos:
        raise ValueError(
            f"max_length={cfg['max_length']} exceeds the model's max_position_embeddings={max_pos}"
        )
    out_dir = Path(cfg["out_dir"]) if cfg.get("out_dir") else default_out_dir(model_dir)
    check_out_dir(out_dir, model_dir)
    splits = {"train": read_split(cfg, cfg["train_file"], True)}
    if cfg.get("validation_file"):
        splits["validation"] = read_split(cfg, cfg["validation_file"], True)
    if cfg.get("test_file"):
        splits["test"] = read_split(cfg, cfg["test_file"], False)
    if "validation" not in splits:
        log.warning("no validation_file: the model is trained and exported without any evaluation")
    task, labels, prepared = prepare_targets(cfg, splits)
    out_dir.mkdir(parents=True, exist_ok=True)
    with log_to_file(out_dir / "finetune.log"):
        summary = train_and_evaluate(cfg, pretrained, out_dir, task, labels, prepared)
    log.info("wrote the fine-tuned model and metrics to %s", out_dir)
    report_at_end(out_dir)  # the run folder's report.html, now with this fine-tuning
    return {**summary, "out_dir": str(out_dir)}


def train_and_evaluate(
    cfg: Mapping,
    pretrained: classify.Pretrained,
    out_dir: Path,
    task: str,
    labels: list[str] | None,
    prepared: dict,
) -> dict:
    log.info("fine-tuning %s -> %s | task %s | labels %s", pretrained.path, out_dir, task, labels)
    log.info("rows: %s", {name: len(ex) for name, (ex, _) in prepared.items()})
    runtime = make_runtime(cfg.get("impl"))
    device, precision = runtime.device, runtime.precision
    tokenizer = pretrained.tokenizer
    encoded = {
        name: classify.encode_examples(
            tokenizer, ex.texts, ex.pairs, targets, cfg["max_length"], regression=task == "regression"
        )
        for name, (ex, targets) in prepared.items()
    }
    torch.manual_seed(cfg["seed"])
    model = classify.build_finetune_model(
        pretrained,
        1 if labels is None else len(labels),
        cfg["dropout"],
        cfg["head"],
        cfg["attention_dropout"],
    )
    weights = class_weight_tensor(cfg["class_weights"], prepared["train"][1], labels) if labels else None
    train_cfg = classify.finetune_config(cfg, model.arch["hidden_size"], runtime)
    started = time.perf_counter()
    classify.finetune(
        model, encoded["train"], train_cfg, seed=cfg["seed"], device=device, class_weights=weights
    )
    summary = {"task_type": task, "labels": labels, "train_rows": len(prepared["train"][0])}
    summary.update(
        train_skipped_rows=prepared["train"][0].skipped, train_seconds=round(time.perf_counter() - started, 2)
    )
    for split in ("validation", "test"):
        if split in prepared:
            ex, targets = prepared[split]
            logits = classify.predict(model, encoded[split], cfg["eval_batch_size"], device, precision)
            summary[split] = evaluate_split(split, ex, targets, logits, labels, out_dir)
    extra = export_extra(cfg, task, labels, summary)
    extra[FRAMING] = pretrained.config.get(FRAMING)  # how the encoder's pretraining framed its inputs
    save_export(model.cpu(), tokenizer, out_dir, extra=extra)
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def export_extra(cfg: Mapping, task: str, labels: list[str] | None, summary: Mapping) -> dict:
    """What goes into the fine-tuned export's config.json besides the architecture."""
    extra = {
        "problem_type": "regression" if task == "regression" else "single_label_classification",
        "text_column": cfg["text_column"],
        "text_pair_column": cfg.get("text_pair_column"),
        "label_column": cfg["label_column"],
        "max_length": int(cfg["max_length"]),
        "finetune": {k: cfg[k] for k in FINETUNE_RECORD},  # the head itself is arch.classifier_head
    }
    if labels is not None:
        extra.update(
            labels=labels,
            id2label={str(i): n for i, n in enumerate(labels)},
            label2id={n: i for i, n in enumerate(labels)},
        )
    return json.loads(json.dumps(extra, default=str))


@hydra.main(config_path=CONF_PATH, config_name="finetune", version_base="1.3")
def main(cfg: DictConfig) -> None:
    setup_logging(None)
    cli_errors(run_finetune)(cfg)


if __name__ == "__main__":
    main()
