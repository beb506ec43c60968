"""One fine-tuning job, the sequence GLUE and ``cramming.finetune`` share: seed → build → finetune →
predict → score. ``predict_texts`` is the same last steps for ``cramming.predict``.

    job = run_job(pretrained, num_labels=2, train=encoded_train, evaluate={"dev": encoded_dev},
                  settings=FinetuneSettings.from_mapping(cfg), runtime=make_runtime(cfg["impl"]),
                  seed=0, score=lambda name, data, logits: score_logits(data.labels, logits, ["neg", "pos"]))
    job.scores["dev"]                    # what ``score`` returned for the dev split
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer

from cramming.config.finetune import FinetuneSettings
from cramming.finetune.encode import EncodedExamples, encode_examples
from cramming.finetune.engine import finetune, predict
from cramming.finetune.pretrained import Pretrained, build_finetune_model
from cramming.runtime import Runtime, seed_everything

# score(split name, its encoded examples, its logits (N, num_labels)) -> the split's result (or None)
Scorer = Callable[[Hashable, EncodedExamples, np.ndarray], object]


@dataclass
class JobResult:
    model: torch.nn.Module  # the fine-tuned classifier, in eval mode on the runtime's device
    logits: dict  # split name -> (N, num_labels) float32, in the split's order
    scores: dict  # split name -> what the scorer returned
    train_seconds: float  # fine-tuning alone
    seconds: float  # fine-tuning plus prediction and scoring


def run_job(
    pretrained: Pretrained,
    num_labels: int,
    train: EncodedExamples,
    evaluate: Mapping[Hashable, EncodedExamples],
    settings: FinetuneSettings,
    runtime: Runtime,
    seed: int,
    score: Scorer,
    class_weights: torch.Tensor | None = None,
) -> JobResult:
    """Fine-tune a fresh classifier on ``train`` with ``seed``, then predict and score every split of
    ``evaluate`` (labelled or not: the scorer decides what an unlabelled split gives)."""
    seed_everything(seed)  # the head's initialisation; finetune reseeds for dropout and batch order
    model = build_finetune_model(
        pretrained, num_labels, settings.dropout, settings.head, settings.attention_dropout
    )
    settings = settings.with_lr_for(pretrained.arch["hidden_size"])
    started = time.perf_counter()
    finetune(model, train, settings, runtime, seed=seed, class_weights=class_weights)
    train_seconds = time.perf_counter() - started
    logits, scores = {}, {}
    for name, split in evaluate.items():
        logits[name] = predict(model, split, settings.eval_batch_size, runtime)
        scores[name] = score(name, split, logits[name])
    return JobResult(model, logits, scores, train_seconds, time.perf_counter() - started)


def score_logits(targets: Sequence, logits: np.ndarray, labels: Sequence[str] | None) -> dict:
    """Metrics of one scored split, as fractions: ``regression_metrics`` on ``logits[:, 0]`` when
    ``labels`` is None, else ``classification_metrics`` of the argmax (report + confusion matrix)."""
    from cramming.finetune import metrics  # scipy and sklearn: loaded for scoring, not for cramming.predict

    if labels is None:
        return metrics.regression_metrics(targets, logits[:, 0])
    return metrics.classification_metrics(targets, logits.argmax(axis=-1), labels)


def predict_texts(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    max_length: int,
    batch_size: int,
    runtime: Runtime,
) -> np.ndarray:
    """Logits (N, num_labels) of raw texts (and second texts of pairs) with a fine-tuned classifier."""
    data = encode_examples(tokenizer, texts, pairs, max_len=max_length)
    return predict(model, data, batch_size, runtime)
