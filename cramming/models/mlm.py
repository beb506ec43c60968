"""The crammed pretraining model: the encoder plus the MLM decoder, tied to the word embeddings."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from cramming.models.encoder import Encoder, init_weights
from cramming.models.heads import PredictionHead, indexed_mlm_loss, spread_labels, token_mlm_loss


class BertForMLM(nn.Module):
    """Masked language model. With sparse prediction only the masked positions are decoded.

    Pretraining passes ``masked_positions`` (B, k) and ``labels`` (B, k), as ``MLMCollator`` makes
    them: the hidden states are gathered by index, so every tensor's shape is fixed by (B, T, k), with
    no boolean indexing and no host sync (one graph under ``torch.compile``). Other callers may pass
    per-token ``labels`` (B, T) with ``IGNORE_INDEX`` at unlabelled positions instead.
    """

    def __init__(self, arch: Mapping, vocab_size: int):
        super().__init__()
        self.arch = dict(arch)
        self.vocab_size = vocab_size
        self.encoder = Encoder(arch, vocab_size)
        self.head = PredictionHead(arch) if arch["prediction_head"] else None
        self.decoder = nn.Linear(arch["hidden_size"], vocab_size, bias=False)
        init_weights(self, arch["init_std"])
        if arch["tie_embeddings"]:
            self.decoder.weight = self.encoder.embeddings.word.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        masked_positions: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        if labels is None:
            return {"logits": self.decode(hidden)}
        sparse = self.arch["sparse_prediction"]
        if masked_positions is not None:
            if masked_positions.shape != labels.shape:
                raise ValueError(
                    f"masked_positions {tuple(masked_positions.shape)} and labels {tuple(labels.shape)} "
                    "must have the same (batch, masked) shape"
                )
            if sparse:
                return indexed_mlm_loss(self.decode, hidden, masked_positions, labels)
            # Dense prediction decodes every position: spread the labels over the sequence.
            labels = spread_labels(labels, masked_positions, input_ids.shape[1])
        # Per-token labels: sparse decodes a data-dependent count (pretraining takes the path above).
        loss, logits = token_mlm_loss(self.decode, hidden, labels, sparse)
        return {"loss": loss, "logits": logits}

    def decode(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.head is not None:
            hidden = self.head(hidden)
        return self.decoder(hidden)


def build_mlm(arch: Mapping, vocab_size: int) -> BertForMLM:
    """The pretraining model from ``cfg.arch`` and the tokenizer's vocabulary size."""
    return BertForMLM(arch, vocab_size)
