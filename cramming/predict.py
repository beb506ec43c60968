"""Predict with a fine-tuned export: one label and one probability per class for every input row.

    python -m cramming.predict model=outputs/RUN/finetuned input=file.csv output=preds.csv
    printf 'a great film\\nawful\\n' | python -m cramming.predict model=outputs/RUN/finetuned

Input: .csv .tsv .jsonl .json .parquet .txt (one text per line), or text lines on stdin when
``input`` is omitted or ``-`` (a tab separates the two texts of a pair). Output columns: the
input columns (``keep_columns=true``), ``prediction``, and ``prob_<label>`` per class (a
regression model writes only ``prediction``). The format follows the output extension; without
``output`` the rows go to stdout as CSV. Batches are sorted by length and run under
``torch.inference_mode`` on every CPU core (``impl.threads``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from cramming.commands import cli_errors
from cramming.conf import read_yaml
from cramming.config import CONF_PATH
from cramming.export.folder import load_model, read_config, read_tokenizer
from cramming.finetune.engine import softmax
from cramming.finetune.job import predict_texts
from cramming.finetune.tabular import (
    WRITE_FORMATS,
    Examples,
    Table,
    examples_from_table,
    file_format,
    read_table,
    write_table,
)
from cramming.runtime import make_runtime
from cramming.tracking import setup_logging

log = logging.getLogger("cramming.predict")


def stdin_examples(lines: Sequence[str], pair: bool) -> Examples:
    """Text lines (``a<TAB>b`` for pairs); blank lines are skipped."""
    rows = [(i, line.rstrip("\r\n")) for i, line in enumerate(lines, start=1) if line.strip()]
    if not rows:
        raise ValueError("no input: pass input=FILE or text lines on stdin")
    texts, pairs = [], [] if pair else None
    for i, line in rows:
        if pair:
            first, sep, second = line.partition("\t")
            if not sep:
                raise ValueError(
                    f"stdin line {i}: the model takes sentence pairs; separate the two texts with a tab"
                )
            texts.append(first)
            pairs.append(second)
        else:
            texts.append(line)
    return Examples("<stdin>", texts, pairs, None, [i for i, _ in rows])


def check_batch_size(batch_size: object) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
    return batch_size


def check_max_length(max_length: object, positions: int) -> int:
    """[CLS] a [SEP] b [SEP] needs a few tokens; the model has ``positions`` position embeddings."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or not 8 <= max_length <= positions:
        raise ValueError(
            f"max_length={max_length!r} must be an integer between 8 and {positions} "
            "(the model's max_position_embeddings)"
        )
    return max_length


class Predictor:
    """A fine-tuned export ready for inference: ``predictor(texts, pairs) -> (labels, probs)``."""

    def __init__(self, model_dir: str | Path, impl: Mapping | None = None, max_length: int | None = None):
        """``impl``: the impl group (device, precision, threads, kernels); missing keys take their defaults."""
        self.runtime = make_runtime(impl)
        self.config = read_config(model_dir)
        if self.config.get("task") != "classification":
            raise ValueError(
                f"{model_dir} is a pretrained {self.config.get('task')} export, not a fine-tuned classifier; "
                "fine-tune it first with python -m cramming.finetune"
            )
        positions = int(self.config["arch"].get("max_position_embeddings") or 512)
        self.max_length = check_max_length(
            max_length if max_length is not None else self.config.get("max_length") or min(128, positions),
            positions,
        )
        self.model = load_model(model_dir, device=self.runtime.device)
        self.tokenizer = read_tokenizer(model_dir)
        self.labels = self.config.get("labels")  # None for regression

    def logits(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, batch_size: int = 64
    ) -> np.ndarray:
        check_batch_size(batch_size)
        return predict_texts(
            self.model, self.tokenizer, texts, pairs, self.max_length, batch_size, self.runtime
        )

    def __call__(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, batch_size: int = 64
    ) -> dict:
        """``prediction`` per text; for classifiers also ``probs`` (N, C) in label order."""
        logits = self.logits(texts, pairs, batch_size)
        if not self.labels:
            return {"prediction": [float(x) for x in logits[:, 0]]}
        probs = softmax(logits)
        return {"prediction": [self.labels[i] for i in probs.argmax(-1)], "probs": probs}


def output_columns(
    result: Mapping, labels: Sequence[str] | None, examples: Examples, table: Table | None
) -> dict[str, list]:
    """Input columns (of the rows that were predicted) followed by the prediction and probabilities."""
    columns: dict[str, list] = {}
    if table is not None:
        row_of_line = {line: i for i, line in enumerate(table.lines)}
        rows = [row_of_line[line] for line in examples.lines]
        columns = {name: [values[i] for i in rows] for name, values in table.columns.items()}
    else:
        columns["text"] = examples.texts
        if examples.pairs is not None:
            columns["text_pair"] = examples.pairs

    def fresh(name: str) -> str:  # never overwrite an input column
        while name in columns:
            name = f"predicted_{name}"
        return name

    columns[fresh("prediction")] = result["prediction"]
    for i, name in enumerate(labels or []):
        columns[fresh(f"prob_{name}")] = [round(float(p), 6) for p in result["probs"][:, i]]
    return columns


def predict_options(cfg: Mapping) -> dict:
    """``cfg`` over conf/predict.yaml's values: Python callers may give only some keys, and the YAML stays
    the one source of the defaults (``model`` has none: it is required)."""
    options = {k: v for k, v in read_yaml("predict.yaml").items() if k != "hydra"}
    options.update(cfg)
    if options["model"] in (None, "", "???"):
        raise ValueError("model= is required: a fine-tuned export folder (from python -m cramming.finetune)")
    return options


def run_predict(cfg: Mapping) -> dict[str, list]:
    """Predict as configured (conf/predict.yaml's keys; missing ones take its values); returns the columns."""
    cfg = predict_options(cfg)
    output = cfg["output"]
    if output:
        file_format(output, WRITE_FORMATS)  # a bad output name fails before any work
    elif (cfg["format"] or "csv") not in ("csv", "tsv", "jsonl"):
        raise ValueError(f"format={cfg['format']!r} is not one of csv, tsv, jsonl (stdout formats)")
    batch_size = check_batch_size(cfg["batch_size"])
    predictor = Predictor(cfg["model"], cfg.get("impl"), cfg["max_length"])
    config = predictor.config
    text_column = cfg["text_column"] or config.get("text_column") or "text"
    pair_column = cfg["text_pair_column"] or config.get("text_pair_column")
    source = cfg["input"]
    table = None
    if source in (None, "", "-"):
        examples = stdin_examples(sys.stdin.readlines(), pair_column is not None)
    else:
        bad_rows = cfg["bad_rows"]
        table = read_table(source, "error" if bad_rows == "error" else "skip")
        examples = examples_from_table(table, text_column, pair_column, None, bad_rows, False)
        if not cfg["keep_columns"]:
            table = None
    started = time.perf_counter()
    with torch.inference_mode():
        result = predictor(examples.texts, examples.pairs, batch_size)
    seconds = time.perf_counter() - started
    log.info(
        "predicted %d rows in %.2fs (%.0f rows/s)", len(examples), seconds, len(examples) / max(seconds, 1e-9)
    )
    columns = output_columns(result, predictor.labels, examples, table)
    write_table(columns, output, None if output else (cfg["format"] or "csv"))
    if output:
        log.info("wrote %d predictions to %s", len(examples), output)
    return columns


@hydra.main(config_path=CONF_PATH, config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    setup_logging(None)
    # Logs go to stderr so that stdout carries only the predictions.
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)
    cli_errors(run_predict, "cramming.predict")(cfg)


if __name__ == "__main__":
    main()
