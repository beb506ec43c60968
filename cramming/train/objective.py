"""What the pretraining loop trains and exports: the MLM model here, a distilled student in cramming.distill.

The loop only needs a module whose forward takes a microbatch and returns ``{"loss", ...side metrics}``
and a way to export it, so other objectives plug in by handing it an ``Objective``, not by subclassing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cramming.data.masking import uses_bert_family, wants_nsp
from cramming.export.folder import FRAMING, pretraining_framing, save_export
from cramming.models import build_mlm, build_pretraining


@dataclass
class Objective:
    """A model builder, its vocabulary rows and its export; what else the run must account for."""

    build_model: Callable[[], torch.nn.Module]  # called after seeding; forward returns the loss dict
    vocab_size: int  # embedding rows (checkpoints must match it)
    export: Callable[[torch.nn.Module, dict, Path], None]  # (trained module, summary, RUN/model)
    identity: dict = field(default_factory=dict)  # more that a checkpoint must match (the teacher's hash)
    extra_flops_per_token: float = 0.0  # work outside the trained module (a teacher's forward), for MFU


# (cfg, corpus, runtime) -> Objective: how pretrain() is told what to train.
ObjectiveFactory = Callable[[Mapping, object, object], Objective]


def model_vocab_size(tokenizer_size: int, multiple: int = 64) -> int:
    """Embedding rows: the tokenizer's vocabulary rounded up to a multiple of 64 (aligned matmuls).

    A small corpus can yield fewer tokens than data.vocab_size asks for; rows no token uses would
    only cost decoder FLOPs.
    """
    return -(-tokenizer_size // multiple) * multiple


def mlm_objective(cfg: Mapping, corpus, runtime=None) -> Objective:
    """Pretraining's own: the crammed MLM, or recipe=bert / roberta's BertForPreTraining."""
    vocab_size = model_vocab_size(corpus.tokenizer.get_vocab_size())

    def build() -> torch.nn.Module:
        if uses_bert_family(cfg["data"]):  # recipe=bert / roberta: own model and batches
            return build_pretraining(cfg["arch"], vocab_size, nsp=wants_nsp(cfg["data"]))
        return build_mlm(cfg["arch"], vocab_size)

    def export(model: torch.nn.Module, summary: dict, folder: Path) -> None:
        # how pretraining framed the inputs (seq_len, [CLS], masking, normaliser), for evaluation code
        extra = {"pretraining": summary, FRAMING: pretraining_framing(cfg, corpus.tokenizer)}
        save_export(model, corpus.tokenizer, folder, extra=extra)

    return Objective(build, vocab_size, export)
