"""A pretrained encoder read once, and the classifier fine-tuning trains on top of it.

    pretrained = load_pretrained("outputs/RUN/model")       # or finetune.external.load_external(...)
    model = build_finetune_model(pretrained, num_labels=2, dropout=0.1, head="auto")

Our exports load only their ``encoder.*`` weights (the MLM decoder or an earlier head is never
built); a transformers checkpoint (``external.py``) stands in for an export behind the same calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from cramming.config.finetune import check_head


@dataclass
class Pretrained:
    """An export read once for fine-tuning: its config.json, tokenizer and ``Encoder`` weights."""

    path: Path
    config: dict
    tokenizer: Tokenizer
    encoder: dict[str, torch.Tensor]  # keys of ``Encoder`` (no ``encoder.`` prefix)
    pooler: dict[str, torch.Tensor] | None = None  # BERT's pretrained pooler (recipe=bert with NSP)

    @property
    def arch(self) -> dict:
        return self.config["arch"]

    @property
    def recipe(self) -> str:
        """crammed | bert | roberta; BertForPreTraining exports (task ``pretraining``) are BERT-family."""
        recipe = (self.config.get("pretraining") or {}).get("recipe")
        return str(recipe or ("bert" if self.config.get("task") == "pretraining" else "crammed"))


def load_pretrained(model_dir: str | Path) -> Pretrained:
    """config.json (checked once), tokenizer and only the ``encoder.*`` weights of an export (MLM or
    classifier), plus a BERT export's pretrained pooler; the decoder or classifier head is never
    built. A ValueError names a bad file."""
    from safetensors import safe_open

    from cramming.export.folder import WEIGHTS, read_config, read_tokenizer

    path = Path(model_dir)
    config = read_config(path)

    def tensors(f, names: set, aliases: dict, prefix: str) -> dict[str, torch.Tensor]:
        wanted = sorted(k for k in names | set(aliases) if k.startswith(prefix))
        return {k[len(prefix) :]: f.get_tensor(aliases.get(k, k)) for k in wanted}

    try:
        with safe_open(str(path / WEIGHTS), "pt") as f:
            names = set(f.keys())
            # save_model stores a tied weight once and records the dropped name -> kept name in metadata
            aliases = {k: v for k, v in (f.metadata() or {}).items() if v in names}
            encoder = tensors(f, names, aliases, "encoder.")
            # BERT fine-tunes its pretrained pooler; a classifier export's pooler is a trained head, not that
            pooler = tensors(f, names, aliases, "pooler.") if config.get("task") == "pretraining" else {}
    except Exception as err:  # safetensors raises its own error types for truncated or corrupt files
        raise ValueError(f"cannot read weights from {path / WEIGHTS}: {err}") from err
    if not encoder:
        raise ValueError(f"{path / WEIGHTS}: the export has no encoder.* weights to fine-tune")
    return Pretrained(path, config, read_tokenizer(path), encoder, pooler or None)


def resolve_head(head: str, pretrained: Pretrained) -> str:
    """``auto``: BERT's pooler head (``bert``) for recipe=bert/roberta exports, as their own
    fine-tuning does; the reference's ``crammed`` head otherwise. Other names are kept as given."""
    check_head("head", head)
    if getattr(pretrained, "external", False):  # a transformers checkpoint (cramming.finetune.external)
        from cramming.finetune.external import resolve_external_head

        head = resolve_external_head(head, pretrained)
    if head == "auto":
        return "bert" if pretrained.recipe in ("bert", "roberta") else "crammed"
    return head


def build_finetune_model(
    pretrained: Pretrained,
    num_labels: int,
    dropout: float = 0.1,
    head: str = "auto",
    attention_dropout: float = 0.1,
) -> torch.nn.Module:
    """A fresh classifier whose encoder is loaded strictly from ``pretrained``; with the ``bert``
    head, its pooler starts from the export's pretrained pooler when there is one (BERT's NSP pooler)."""
    from cramming.export.folder import WEIGHTS
    from cramming.models import build_classifier

    config, head = pretrained.config, resolve_head(head, pretrained)
    if getattr(pretrained, "external", False):  # a transformers checkpoint: AutoModel under the same head
        from cramming.finetune.external import ExternalClassifier

        return ExternalClassifier(pretrained, num_labels, dropout, head, attention_dropout)
    try:
        model = build_classifier(
            config["arch"],
            config["vocab_size"],
            num_labels,
            pretrained.encoder,
            dropout,
            head,
            attention_dropout,
        )
    except RuntimeError as err:  # strict load: missing, unexpected or mis-shaped keys
        raise ValueError(
            f"{pretrained.path / WEIGHTS}: the encoder weights do not match config.json's arch: {err}"
        ) from err
    if head == "bert" and pretrained.pooler:
        model.pooler.load_state_dict(pretrained.pooler, strict=True)
    return model
