"""Batches for the BERT and RoBERTa recipes (``data.masking=bert``): per-token dynamic masking, NSP pairs.

Each non-special token is chosen independently with probability ``mlm_probability`` (15%), and a chosen
token becomes ``[MASK]`` (80%), a random non-special token (10%) or stays itself (10%); labels hold the
original id at chosen positions and -100 elsewhere (dense, ``(B, T)``). A new mask is drawn every time
a sequence is fed (RoBERTa's dynamic masking; BERT's static masks were an artefact of its data script).
This is its own collator, independent of the crammed recipe's shared ``MLMCollator``.
"""

from __future__ import annotations

import torch

from cramming.data.collator import IGNORE_INDEX
from cramming.data.pairs import EXTRA_COLUMNS


class BertMasking:
    """``inputs, labels = mask(ids, generator)`` with BERT's 80/10/10 rule; special ids are never chosen."""

    def __init__(self, vocab_size: int, special_ids: dict[str, int], mlm_probability: float = 0.15):
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability={mlm_probability!r} must be in (0, 1)")
        self.p, self.mask_id = float(mlm_probability), int(special_ids["mask"])
        self.special = torch.tensor(sorted({int(v) for v in special_ids.values()}), dtype=torch.long)
        allowed = torch.ones(vocab_size, dtype=torch.bool)
        allowed[self.special[self.special < vocab_size]] = False
        self.replacements = allowed.nonzero().squeeze(1)

    def __call__(self, ids: torch.Tensor, generator: torch.Generator | None = None):
        u = torch.rand(ids.shape, generator=generator)
        pick = torch.randint(len(self.replacements), ids.shape, generator=generator)
        chosen = (u < self.p) & ~torch.isin(ids, self.special)
        labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
        inputs = torch.where(chosen & (u < 0.8 * self.p), torch.full_like(ids, self.mask_id), ids)
        random_tokens = self.replacements[pick]
        return torch.where(chosen & (u >= 0.8 * self.p) & (u < 0.9 * self.p), random_tokens, inputs), labels


class RobertaCollator:
    """Packed rows ``(B, T)`` -> ``{"input_ids", "labels", "attention_mask"}`` (no token types).

    Full-sentence blocks (``data.packing=full-sentences``) end in ``<pad>``: the mask keeps it unattended,
    as fairseq's padding mask does (the padding is never chosen for masking either: it is special)."""

    def __init__(self, vocab_size: int, special_ids: dict[str, int], mlm_probability: float = 0.15):
        self.masking = BertMasking(vocab_size, special_ids, mlm_probability)
        self.pad = int(special_ids["pad"])

    def __call__(self, rows: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        inputs, labels = self.masking(rows, generator)
        return {"input_ids": inputs, "labels": labels, "attention_mask": (rows != self.pad).long()}


class PairCollator:
    """Sentence-pair rows (``pairs.frame_pairs``: ids, b_start, length, is_random) -> the model's batch.

    ``token_type_ids`` are 0 for ``[CLS] A [SEP]`` and 1 for ``B [SEP]``; ``attention_mask`` is 0 on the
    padding; ``next_sentence_label`` is 1 when B is a random segment (transformers' convention).
    """

    def __init__(self, vocab_size: int, special_ids: dict[str, int], mlm_probability: float = 0.15):
        self.masking = BertMasking(vocab_size, special_ids, mlm_probability)
        self.pad = int(special_ids["pad"])

    def __call__(self, rows: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        ids, extra = rows[:, :-EXTRA_COLUMNS], rows[:, -EXTRA_COLUMNS:]
        positions = torch.arange(ids.shape[1]).unsqueeze(0)  # (1, T)
        real = positions < extra[:, 1:2]  # (B, T)
        inputs, labels = self.masking(ids, generator)
        return {
            "input_ids": inputs,
            "labels": labels,
            "token_type_ids": ((positions >= extra[:, 0:1]) & real).long(),
            "attention_mask": real.long(),
            "next_sentence_label": extra[:, 2].clone(),
        }


def build_collator(data_cfg, vocab_size: int, special_ids: dict[str, int]):
    """The recipe's collator for ``data.masking=bert``: pairs for ``objective=nsp``, packed rows otherwise."""
    kind = PairCollator if data_cfg.get("objective", "mlm") == "nsp" else RobertaCollator
    return kind(vocab_size, special_ids, float(data_cfg["mlm_probability"]))
