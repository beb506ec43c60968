"""``python -m cramming.finetune``: fine-tune a pretrained export on your own labelled files, evaluate
it, and export the result.

    python -m cramming.finetune model=outputs/RUN/model train_file=train.csv validation_file=dev.csv \\
        text_column=text label_column=label [text_pair_column=...] [test_file=...] [out_dir=...]

Labels may be strings or integers; they are mapped by name, sorted (numerically when every
label is a number, alphabetically otherwise) and saved with the model in config.json as
``labels`` / ``id2label`` / ``label2id``. A float label makes a regression task (see
``labels.infer_task_type``). Training, prediction and scoring are the shared job
(``cramming.finetune.job``). Every option is in conf/finetune.yaml.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from cramming.commands import cli_errors
from cramming.config import CONF_PATH
from cramming.config.finetune import FinetuneSettings
from cramming.export.folder import CONFIG, FRAMING, save_export
from cramming.finetune import metrics
from cramming.finetune.encode import encode_examples
from cramming.finetune.engine import softmax
from cramming.finetune.job import run_job, score_logits
from cramming.finetune.labels import TASK_TYPES, canonical_label, class_weight_tensor, prepare_targets
from cramming.finetune.pretrained import Pretrained, load_pretrained
from cramming.finetune.tabular import Examples, check_bad_rows, load_examples, write_table
from cramming.report import report_at_end
from cramming.runtime import make_runtime
from cramming.tracking import log_to_file, setup_logging

log = logging.getLogger("cramming.finetune")

# The training settings recorded in the fine-tuned export's config.json.
FINETUNE_RECORD = ("train_file", "epochs", "lr", "batch_size", "seed", "class_weights", "weight_decay", "betas",
                   "eps", "grad_clip", "warmup_fraction", "dropout", "attention_dropout", "head")  # fmt: skip


def check_config(cfg: Mapping) -> FinetuneSettings:
    """The file and label options checked here; the fine-tuning options by ``FinetuneSettings``."""
    check_bad_rows(cfg["bad_rows"])
    if cfg["task_type"] not in TASK_TYPES:
        raise ValueError(f"task_type={cfg['task_type']!r} is not one of {list(TASK_TYPES)}")
    settings = FinetuneSettings.from_mapping(cfg)
    for key in ("model", "train_file", "text_column", "label_column"):
        if not cfg.get(key):
            raise ValueError(f"{key}= is required (see conf/finetune.yaml)")
    return settings


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


def classification_summary(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict:
    """The engine's metrics plus macro and weighted precision/recall/F1 and a text report."""
    from sklearn import metrics as skm

    result = metrics.classification_metrics(y_true, y_pred, labels)  # what job.score_logits gives
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
    probs = softmax(logits)
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
        result = score_logits(targets, logits, None)
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
    settings = check_config(cfg)
    model_dir = Path(cfg["model"])
    pretrained = load_pretrained(model_dir)  # config, tokenizer and encoder, read once
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
        summary = train_and_evaluate(cfg, settings, pretrained, out_dir, task, labels, prepared)
    log.info("wrote the fine-tuned model and metrics to %s", out_dir)
    report_at_end(out_dir)  # the run folder's report.html, now with this fine-tuning
    return {**summary, "out_dir": str(out_dir)}


def train_and_evaluate(
    cfg: Mapping,
    settings: FinetuneSettings,
    pretrained: Pretrained,
    out_dir: Path,
    task: str,
    labels: list[str] | None,
    prepared: dict,
) -> dict:
    """The shared job on the prepared splits; writes each split's outputs, the export and metrics.json."""
    log.info("fine-tuning %s -> %s | task %s | labels %s", pretrained.path, out_dir, task, labels)
    log.info("rows: %s", {name: len(ex) for name, (ex, _) in prepared.items()})
    runtime = make_runtime(cfg.get("impl"))
    encoded = {
        name: encode_examples(
            pretrained.tokenizer,
            ex.texts,
            ex.pairs,
            targets,
            cfg["max_length"],
            regression=task == "regression",
        )
        for name, (ex, targets) in prepared.items()
    }
    weights = class_weight_tensor(cfg["class_weights"], prepared["train"][1], labels) if labels else None

    def score(split: str, _data, logits: np.ndarray) -> dict | None:
        examples, targets = prepared[split]
        return evaluate_split(split, examples, targets, logits, labels, out_dir)

    evaluate = {split: encoded[split] for split in ("validation", "test") if split in encoded}
    num_labels = 1 if labels is None else len(labels)
    job = run_job(pretrained, num_labels, encoded["train"], evaluate, settings, runtime, cfg["seed"], score,
                  class_weights=weights)  # fmt: skip
    summary = {"task_type": task, "labels": labels, "train_rows": len(prepared["train"][0])}
    summary.update(train_skipped_rows=prepared["train"][0].skipped, train_seconds=round(job.train_seconds, 2))
    summary.update(job.scores)
    extra = export_extra(cfg, task, labels, summary)
    extra[FRAMING] = pretrained.config.get(FRAMING)  # how the encoder's pretraining framed its inputs
    save_export(job.model.cpu(), pretrained.tokenizer, out_dir, extra=extra)
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
    cli_errors(run_finetune, "cramming.finetune")(cfg)
