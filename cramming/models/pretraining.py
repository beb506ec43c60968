"""Pretraining models of the BERT and RoBERTa recipes: MLM head with output bias, and BERT's NSP head.

``BertForPreTraining`` is the shared ``Encoder`` plus BERT's prediction head (dense + GELU + LayerNorm),
a decoder tied to the word embeddings with its own bias, and, with ``nsp=True``, the pooler (Linear +
tanh on ``[CLS]``) and the 2-way next-sentence classifier. The loss is mean MLM loss + mean NSP loss;
``nsp_accuracy`` comes with it for the log. Labels are dense ``(B, T)`` with -100 at unmasked positions
(``cramming.data.masking.BertMasking``); with ``sparse_prediction`` only the masked positions are
decoded. The layout maps one to one onto transformers' ``BertForPreTraining`` and ``RobertaForMaskedLM``
(``cramming.export.native``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from cramming.models.encoder import Encoder, init_weights
from cramming.models.heads import PredictionHead, nsp_logits, nsp_loss, token_mlm_loss


class BertForPreTraining(nn.Module):
    def __init__(self, arch: Mapping, vocab_size: int, nsp: bool = False):
        super().__init__()
        self.arch, self.vocab_size, self.nsp = dict(arch), vocab_size, bool(nsp)
        width = arch["hidden_size"]
        self.encoder = Encoder(arch, vocab_size)
        self.head = PredictionHead(arch) if arch["prediction_head"] else None
        self.decoder = nn.Linear(width, vocab_size, bias=False)
        self.decoder_bias = nn.Parameter(torch.zeros(vocab_size))
        self.pooler = nn.Linear(width, width) if nsp else None
        self.nsp_head = nn.Linear(width, 2) if nsp else None
        init_weights(self, arch["init_std"])
        if arch["tie_embeddings"]:
            self.decoder.weight = self.encoder.embeddings.word.weight

    def decode(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.head is not None:
            hidden = self.head(hidden)
        return self.decoder(hidden) + self.decoder_bias

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        next_sentence_label: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        out: dict[str, torch.Tensor] = {}
        if self.nsp:
            out["nsp_logits"] = nsp_logits(self.pooler, self.nsp_head, hidden)  # (B, 2)
        if labels is None:
            out["logits"] = self.decode(hidden)  # (B, T, V)
            return out
        sparse = self.arch.get("sparse_prediction", True)
        mlm, logits = token_mlm_loss(self.decode, hidden, labels, sparse)
        out.update(logits=logits, mlm_loss=mlm.detach(), loss=mlm)
        if self.nsp and next_sentence_label is not None:
            nsp, correct = nsp_loss(out["nsp_logits"], next_sentence_label)
            out.update(loss=mlm + nsp, nsp_loss=nsp.detach(), nsp_accuracy=correct.detach())
        return out


def build_pretraining(arch: Mapping, vocab_size: int, nsp: bool = False) -> BertForPreTraining:
    """The recipe=bert / roberta model from ``cfg.arch``: with the NSP head when ``nsp`` (data.objective=nsp)."""
    if nsp and int(arch.get("type_vocab_size", 0)) < 2:
        raise ValueError(
            f"data.objective=nsp needs token types for A and B, but arch={arch.get('name')!r} has "
            f"type_vocab_size={arch.get('type_vocab_size', 0)}; use arch=bert-base (recipe=bert) or set "
            "arch.type_vocab_size=2."
        )
    return BertForPreTraining(arch, vocab_size, nsp=nsp)
