"""The models: one encoder and the heads on it, each built from ``cfg.arch`` (and the vocabulary size).

    encoder.py      embeddings, positions (learned, scaled sinusoidal, rotary), attention, FFN, blocks
    heads.py        MLM decoding + loss, BERT's pooler + NSP, classifier heads, IGNORE_INDEX
    mlm.py          BertForMLM: the crammed recipe's pretraining model
    pretraining.py  BertForPreTraining: the BERT / RoBERTa recipes' (decoder bias, optional NSP)
    classifier.py   BertForSequenceClassification: fine-tuning

Nothing here imports the data pipeline, Triton or transformers (``tests/test_models_imports.py``).
"""

from cramming.models.classifier import BertForSequenceClassification, build_classifier
from cramming.models.encoder import Encoder, Rotary, count_parameters, init_weights
from cramming.models.heads import (
    CLASSIFIER_HEADS,
    CRAMMED_HEAD_WIDTH,
    IGNORE_INDEX,
    LEGACY_HEAD,
    check_head,
    classification_output,
)
from cramming.models.mlm import BertForMLM, build_mlm
from cramming.models.pretraining import BertForPreTraining, build_pretraining

__all__ = [
    "CLASSIFIER_HEADS",
    "CRAMMED_HEAD_WIDTH",
    "IGNORE_INDEX",
    "LEGACY_HEAD",
    "BertForMLM",
    "BertForPreTraining",
    "BertForSequenceClassification",
    "Encoder",
    "Rotary",
    "build_classifier",
    "build_mlm",
    "build_pretraining",
    "check_head",
    "classification_output",
    "count_parameters",
    "init_weights",
]
