"""What the models put on top of the encoder: MLM decoding and loss, BERT's pooler + NSP, classifier heads.

The heads are functions over the parameters their model holds, not modules of their own, so the
parameter names (``head``, ``decoder``, ``pooler``, ``nsp_head``, ``classifier``) stay those of every
export and of the remote code (``cramming/export/hf/modeling_cramming.py``).

``IGNORE_INDEX`` is the label of a position without a target: the masking (``cramming.data.masking``)
writes it and every loss here skips it. It is defined here, with the losses, so that importing the model
never imports the data pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from cramming.kernels import dispatch
from cramming.models.encoder import LayerNorm

IGNORE_INDEX = -100

Decoder = Callable[[torch.Tensor], torch.Tensor]  # (..., H) hidden states -> (..., V) logits


class PredictionHead(nn.Module):
    """BERT's dense + GELU + norm transform before the decoder (bert-base only)."""

    def __init__(self, arch: Mapping):
        super().__init__()
        width = arch["hidden_size"]
        self.dense = nn.Linear(width, width, bias=arch["linear_bias"])
        self.norm = LayerNorm(width, arch["norm_eps"], arch["norm_bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(dispatch.gelu(self.dense(x)))


def indexed_mlm_loss(
    decode: Decoder, hidden: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Gather (B, k) positions -> (B·k, H) -> decoder -> cross-entropy; slots labelled -100 add nothing.

    The crammed sparse MLM head. The (B·T, V) logits matrix is the largest tensor in the model: decoding
    only k of T positions saves most of it, and a fixed k keeps every shape static.
    """
    width = hidden.shape[-1]
    index = positions.unsqueeze(-1).expand(-1, -1, width)  # (B, k, H)
    logits = decode(hidden.gather(1, index).view(-1, width))  # (B·k, V)
    loss = F.cross_entropy(logits.float(), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    return {"loss": loss, "logits": logits}


def token_mlm_loss(
    decode: Decoder, hidden: torch.Tensor, labels: torch.Tensor, sparse: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits) for per-token labels (B, T) with ``IGNORE_INDEX`` at unlabelled positions.

    ``sparse`` decodes only the labelled positions (M of them, a data-dependent count: logits (M, V));
    otherwise every position is decoded (logits (B, T, V)).
    """
    if sparse:
        flat = labels.reshape(-1)
        selected = flat != IGNORE_INDEX
        logits = decode(hidden.reshape(-1, hidden.shape[-1])[selected])  # (M, V)
        return F.cross_entropy(logits.float(), flat[selected]), logits
    logits = decode(hidden)  # (B, T, V)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1)), logits


def spread_labels(labels: torch.Tensor, positions: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(B, k) labels at (B, k) positions -> (B, T) per-token labels, ``IGNORE_INDEX`` elsewhere."""
    shape = (labels.shape[0], seq_len)
    full = torch.full(shape, IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
    return full.scatter(1, positions, labels)


def nsp_logits(pooler: nn.Linear, nsp_head: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """(B, T, H) -> (B, 2) next-sentence logits: BERT's pooler (Linear + tanh) on [CLS], then the head."""
    return nsp_head(torch.tanh(pooler(hidden[:, 0])))


def nsp_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean NSP cross-entropy, accuracy) of (B, 2) logits against (B,) labels (1: B is random)."""
    loss = F.cross_entropy(logits.float(), labels)
    accuracy = (logits.argmax(-1) == labels).float().mean()
    return loss, accuracy


# Classification heads on the first token's vector, all with the same parameter names (pooler,
# classifier) so a head is a choice of widths and activation, and old exports keep their keys:
#   crammed  Linear(H, 1024) -> tanh -> dropout -> Linear(1024, n)   the reference's (GLUE-sane)
#   bert     Linear(H, H) -> tanh -> dropout -> Linear(H, n)         BERT's own pooler
#   gelu     dropout -> Linear(H, H) -> GELU -> dropout -> Linear(H, n)   ours before the reference's
CLASSIFIER_HEADS = ("crammed", "bert", "gelu")
CRAMMED_HEAD_WIDTH = 1024  # the reference's classification_head.head_dim, whatever the model width
LEGACY_HEAD = "gelu"  # exports from before heads were named carry no classifier_head


def check_head(head: str) -> str:
    if head not in CLASSIFIER_HEADS:
        raise ValueError(f"head={head!r} is not one of {list(CLASSIFIER_HEADS)}")
    return head


def head_width(head: str, width: int) -> int:
    """The pooler's output width for ``head`` on a model of hidden size ``width``."""
    return CRAMMED_HEAD_WIDTH if head == "crammed" else width


def pool_first_token(head: str, pooler: nn.Linear, dropout: nn.Dropout, hidden: torch.Tensor) -> torch.Tensor:
    """(B, T, H) -> the head's (B, inner) features of the first token, dropout applied."""
    first = hidden[:, 0]
    if head == "gelu":
        return dropout(dispatch.gelu(pooler(dropout(first))))
    return dropout(torch.tanh(pooler(first)))


def classification_output(
    logits: torch.Tensor, labels: torch.Tensor | None, class_weights: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """``{"logits", "loss"}`` of a classifier: MSE for one output (regression), else weighted cross-entropy."""
    out = {"logits": logits}
    if labels is not None:
        if logits.shape[-1] == 1:
            out["loss"] = F.mse_loss(logits.squeeze(-1).float(), labels.float())
        else:
            out["loss"] = F.cross_entropy(logits.float(), labels, weight=class_weights)
    return out
