"""Pretraining: the loop (loop.py), one optimizer step (step.py), checkpoints, the log, the end of a run.

Public names: ``pretrain`` (the whole run), ``Pretrainer`` (the loop), ``Objective`` (what it trains),
``optimizer_step`` (the one optimizer step; fine-tuning uses it too), ``to_device``, ``evaluate_mlm``.
"""

from cramming.train.evaluate import evaluate_mlm
from cramming.train.loop import Pretrainer, prepare_corpus_once, pretrain
from cramming.train.objective import Objective, mlm_objective, model_vocab_size
from cramming.train.step import SIDE_METRICS, optimizer_step, to_device

__all__ = [
    "SIDE_METRICS",
    "Objective",
    "Pretrainer",
    "evaluate_mlm",
    "mlm_objective",
    "model_vocab_size",
    "optimizer_step",
    "prepare_corpus_once",
    "pretrain",
    "to_device",
]
