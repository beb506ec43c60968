"""Any transformers encoder checkpoint through this project's fine-tuning protocol.

    python -m cramming.glue model=bert-base-uncased          # a hub id (online), or
    python -m cramming.glue model=path/to/roberta-folder     # a local transformers folder

The checkpoint is loaded with ``AutoModel`` (the bare encoder) and its own fast tokenizer
(``AutoTokenizer``); the protocol's head, dropout, optimizer, seeds, metrics, confusion matrices
and submission files are the same as for this project's exports (``cramming.finetune``). Families
tested offline: BERT, RoBERTa, DistilBERT, ALBERT, ModernBERT (random tiny folders built in the tests).
"""

from __future__ import annotations

import copy
import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from cramming.models import CRAMMED_HEAD_WIDTH, classification_output

# Config attributes that hold the hidden / attention dropout, by family (set where the config has them).
HIDDEN_DROPOUT = ("hidden_dropout_prob", "dropout", "mlp_dropout", "embedding_dropout")
ATTENTION_DROPOUT = ("attention_probs_dropout_prob", "attention_dropout")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def is_external(model: str | Path) -> bool:
    """True for a transformers folder (config.json of another model_type) or a hub id; False for a
    cramming export or a path that is neither (those get the export loader's own error)."""
    path = Path(str(model))
    config = path / "config.json"
    if config.is_file():
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (OSError, ValueError, AttributeError):
            return False
        return model_type not in (None, "cramming-bert")
    text = str(model)
    return not path.exists() and HUB_ID.fullmatch(text) is not None and text.count("/") <= 1


def slug(model: str | Path) -> str:
    """A folder name for a checkpoint: ``FacebookAI/roberta-base`` -> ``roberta-base``."""
    return re.sub(r"[^\w.-]+", "-", Path(str(model).rstrip("/")).name) or "model"


@dataclass
class ExternalPretrained:
    """An external encoder read once; it stands in for ``pretrained.Pretrained`` in the shared job."""

    path: str  # the folder or hub id as given
    hf_config: object  # transformers PretrainedConfig
    encoder: nn.Module  # AutoModel with its pretrained weights (copied for each fine-tuning run)
    tokenizer: Tokenizer  # the fast tokenizer's backend: truncation/post-processing as the family wants
    pad_id: int
    external = True
    recipe = "external"

    @property
    def config(self) -> dict:
        cfg = self.hf_config
        return {"arch": self.arch, "model_type": cfg.model_type, "external": True}

    @property
    def arch(self) -> dict:
        cfg = self.hf_config
        width = getattr(cfg, "hidden_size", None) or getattr(cfg, "dim", None)  # DistilBERT: dim
        return {"name": cfg.model_type, "hidden_size": int(width),
                "max_position_embeddings": getattr(cfg, "max_position_embeddings", None)}  # fmt: skip

    def parameters(self) -> int:
        return sum(p.numel() for p in self.encoder.parameters())


def load_external(model: str | Path) -> ExternalPretrained:
    """AutoConfig + AutoModel + AutoTokenizer (fast); a ValueError says what could not be loaded."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(str(model))
        encoder = AutoModel.from_pretrained(str(model), config=config)
        tokenizer = AutoTokenizer.from_pretrained(str(model))
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(
            f"model={model} is neither a cramming export nor a transformers checkpoint that loads offline "
            f"here (a folder with config.json, weights and a tokenizer, or a hub id when online): {err}"
        ) from err
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"model={model}: its tokenizer has no fast (tokenizers) version; one is needed")
    if tokenizer.pad_token_id is None:
        raise ValueError(f"model={model}: its tokenizer has no padding token")
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    return ExternalPretrained(str(model), config, encoder.float(), backend, int(tokenizer.pad_token_id))


def resolve_external_head(head: str, pretrained: ExternalPretrained) -> str:
    """``auto``: the checkpoint's own pretrained pooler (``bert``) when it has one (BERT, ALBERT), else
    the reference's ``crammed`` head on the first token."""
    if head == "auto":
        return "bert" if _pooler_linear(pretrained.encoder) is not None else "crammed"
    return head


def _pooler_linear(encoder: nn.Module) -> nn.Linear | None:
    pooler = getattr(encoder, "pooler", None)
    if isinstance(pooler, nn.Linear):  # ALBERT
        return pooler
    return getattr(pooler, "dense", None) if pooler is not None else None  # BERT, RoBERTa


class ExternalClassifier(nn.Module):
    """An external encoder plus the protocol's head on the first token; the fine-tuning engine's model interface."""

    def __init__(self, pretrained: ExternalPretrained, num_labels: int, dropout: float, head: str,
                 attention_dropout: float):  # fmt: skip
        super().__init__()
        self.encoder = encoder_with_dropout(pretrained, dropout, attention_dropout)
        self.num_labels, self.head = num_labels, resolve_external_head(head, pretrained)
        width = pretrained.arch["hidden_size"]
        pretrained_pooler = _pooler_linear(self.encoder)
        inner = CRAMMED_HEAD_WIDTH if self.head == "crammed" else width
        self.pooler = nn.Linear(width, inner)
        if self.head == "bert" and pretrained_pooler is not None:
            self.pooler.load_state_dict(pretrained_pooler.state_dict())
        if hasattr(self.encoder, "pooler"):
            self.encoder.pooler = None  # the head above replaces it (BERT and ALBERT skip a None pooler)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(inner, num_labels)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)
        if pretrained_pooler is None or self.head != "bert":
            nn.init.normal_(self.pooler.weight, std=0.02)
            nn.init.zeros_(self.pooler.bias)
        self.takes_types = "token_type_ids" in inspect.signature(self.encoder.forward).parameters

    def forward(self, input_ids, attention_mask=None, labels=None, token_type_ids=None, class_weights=None):
        extra = {"token_type_ids": token_type_ids} if self.takes_types and token_type_ids is not None else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        first = hidden[:, 0]  # (B, H)
        if self.head == "gelu":
            pooled = self.dropout(F.gelu(self.pooler(self.dropout(first))))
        else:
            pooled = self.dropout(torch.tanh(self.pooler(first)))
        logits = self.classifier(pooled)  # (B, num_labels)
        return classification_output(logits, labels, class_weights)


def encoder_with_dropout(pretrained: ExternalPretrained, hidden: float, attention: float) -> nn.Module:
    """A copy of the pretrained encoder rebuilt from its config with the protocol's dropout (modules
    such as ModernBERT's are built differently for a dropout of 0), then given the pretrained weights."""
    from transformers import AutoModel

    config = copy.deepcopy(pretrained.hf_config)
    for keys, value in ((HIDDEN_DROPOUT, hidden), (ATTENTION_DROPOUT, attention)):
        for key in keys:
            if isinstance(getattr(config, key, None), (int, float)):
                setattr(config, key, float(value))
    encoder = AutoModel.from_config(config)
    encoder.load_state_dict(pretrained.encoder.state_dict(), strict=True)
    return encoder.float()
