"""Sequence classification: the encoder plus a head on the first token's vector (``heads.CLASSIFIER_HEADS``)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from cramming.models.encoder import Encoder, init_weights
from cramming.models.heads import check_head, classification_output, head_width, pool_first_token


class BertForSequenceClassification(nn.Module):
    """The encoder plus a ``head`` on the first token's vector; regression when num_labels == 1.

    ``dropout`` is the hidden and head dropout, ``attention_dropout`` the dropout on attention
    probabilities (None keeps ``arch``'s). Both, and the head, are written into ``self.arch``, so
    an export's config.json rebuilds the same model.
    """

    def __init__(
        self,
        arch: Mapping,
        vocab_size: int,
        num_labels: int,
        dropout: float = 0.1,
        head: str = "crammed",
        attention_dropout: float | None = None,
    ):
        super().__init__()
        attention_dropout = arch["attention_dropout"] if attention_dropout is None else attention_dropout
        arch = {**arch, "dropout": dropout, "attention_dropout": attention_dropout}
        arch["classifier_head"] = check_head(head)
        self.arch = dict(arch)
        self.vocab_size = vocab_size
        self.num_labels = num_labels
        self.head = head
        self.encoder = Encoder(arch, vocab_size)
        width = arch["hidden_size"]
        inner = head_width(head, width)
        self.pooler = nn.Linear(width, inner)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(inner, num_labels)
        init_weights(self, arch["init_std"])

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> the head's (B, inner) features of the first token, dropout applied."""
        return pool_first_token(self.head, self.pooler, self.dropout, hidden)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        class_weights: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        logits = self.classifier(self.pool(hidden))  # (B, num_labels)
        return classification_output(logits, labels, class_weights)


def build_classifier(
    arch: Mapping,
    vocab_size: int,
    num_labels: int,
    encoder_state: Mapping | None = None,
    dropout: float = 0.1,
    head: str = "crammed",
    attention_dropout: float | None = None,
) -> BertForSequenceClassification:
    """A classifier whose encoder starts from ``encoder_state`` (keys of ``Encoder``), strictly loaded."""
    model = BertForSequenceClassification(arch, vocab_size, num_labels, dropout, head, attention_dropout)
    if encoder_state is not None:
        model.encoder.load_state_dict(encoder_state, strict=True)
    return model
