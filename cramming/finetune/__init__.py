"""Fine-tuning, once, for GLUE (``cramming.glue``), your own task (``python -m cramming.finetune``) and
prediction (``cramming.predict``).

| module | job |
|---|---|
| ``config.py`` | ``FinetuneSettings``: the fine-tuning options, each checked once; ``resolve_lr`` |
| ``encode.py`` | tokenize (``encode_examples``), length-bucketed batches, padding (``collate``) |
| ``pretrained.py`` | read an export once (``load_pretrained``), build the classifier (``build_finetune_model``) |
| ``external.py`` | a transformers checkpoint behind the same calls |
| ``engine.py`` | ``finetune`` (pretraining's ``optimizer_step`` under the cosine schedule) and ``predict`` |
| ``job.py`` | ``run_job``: seed → build → finetune → predict → score |
| ``labels.py`` | label names, task type, class indices or regression targets, class weights |
| ``tabular.py`` | your files (CSV, TSV, JSON lines, Parquet, text) in, prediction tables out |
| ``metrics.py`` | classification and regression metrics, the confusion-matrix plot |
| ``command.py`` | ``python -m cramming.finetune``: files in, metrics, predictions and an export out |
"""

from cramming.config.finetune import FinetuneSettings, resolve_lr
from cramming.finetune.command import main, run_finetune
from cramming.finetune.encode import EncodedExamples, collate, encode_examples
from cramming.finetune.engine import finetune, predict, softmax
from cramming.finetune.job import JobResult, run_job, score_logits
from cramming.finetune.labels import (
    canonical_label,
    class_weight_tensor,
    infer_task_type,
    prepare_targets,
    sort_labels,
)
from cramming.finetune.pretrained import Pretrained, build_finetune_model, load_pretrained, resolve_head

__all__ = [
    "EncodedExamples",
    "FinetuneSettings",
    "JobResult",
    "Pretrained",
    "build_finetune_model",
    "canonical_label",
    "class_weight_tensor",
    "collate",
    "encode_examples",
    "finetune",
    "infer_task_type",
    "load_pretrained",
    "main",
    "predict",
    "prepare_targets",
    "resolve_head",
    "resolve_lr",
    "run_finetune",
    "run_job",
    "score_logits",
    "softmax",
    "sort_labels",
]
