"""MLM masking per batch, every recipe's: the labels contract is ``IGNORE_INDEX`` (cramming.models) at
positions without a target.

``data.masking=crammed`` (``MLMCollator``), as crammedBERT masks: a fixed count of positions per sequence,
80/10/10; labels are (B, k) beside their ``masked_positions``.

``data.masking=bert`` (the BERT and RoBERTa recipes: ``BertMasking`` in ``RobertaCollator`` and, with NSP
pairs, ``PairCollator``): each non-special token is chosen independently with probability
``mlm_probability`` (15%), and a chosen token becomes ``[MASK]`` (80%), a random non-special token (10%)
or stays itself (10%); labels hold the original id at chosen positions and -100 elsewhere (dense,
``(B, T)``). A new mask is drawn every time a sequence is fed (RoBERTa's dynamic masking; BERT's static
masks were an artefact of its data script).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from cramming.data.pairs import EXTRA_COLUMNS
from cramming.models.heads import IGNORE_INDEX


class MLMCollator:
    """``batch = collate(ids, generator)``: BERT-style dynamic masking with static shapes.

    Each sequence of length T gets exactly ``k = max(1, round(mlm_probability * T))`` masked slots (the
    reference masks 32 of 128), chosen uniformly without replacement among its non-special positions.
    A chosen position becomes ``[MASK]`` with probability ``mask_fraction``, a random token of the
    trained vocabulary (never a special one) with probability ``random_fraction``, and stays itself
    otherwise. Special tokens ([CLS], [SEP], [PAD], ...) are never chosen.

    Returns a dict of model inputs: ``input_ids`` (B, T) with the masking applied, ``masked_positions``
    (B, k) int64 and ``labels`` (B, k), the original ids at those positions. The shapes depend only on
    (B, T), so a compiled model sees one shape and never syncs on a count.

    A sequence with fewer than k non-special positions (the padded tail of a split, a run of [SEP]s)
    has all of them masked; its remaining slots come last and point at distinct special positions,
    which stay unchanged and carry the label ``IGNORE_INDEX``, so the loss skips them.

    Each call draws the same amount of randomness for a given (B, T), whatever the ids, so a resumed
    run that restores the generator masks exactly as the uninterrupted one.
    """

    def __init__(
        self,
        vocab_size: int,
        special_ids: dict[str, int],
        mlm_probability: float = 0.25,
        mask_fraction: float = 0.8,
        random_fraction: float = 0.1,
    ):
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability={mlm_probability!r} must be in (0, 1)")
        if mask_fraction < 0 or random_fraction < 0 or mask_fraction + random_fraction > 1:
            raise ValueError(
                f"mask_fraction={mask_fraction!r} and random_fraction={random_fraction!r} must be ≥ 0 and sum to ≤ 1"
            )
        if "mask" not in special_ids:
            raise ValueError(f"special_ids {special_ids} lacks 'mask'")
        self.vocab_size, self.p = vocab_size, float(mlm_probability)
        self.mask_cut, self.random_cut = mask_fraction, mask_fraction + random_fraction
        self.mask_id = int(special_ids["mask"])
        self.special = torch.tensor(sorted({int(v) for v in special_ids.values()}), dtype=torch.long)
        allowed = torch.ones(vocab_size, dtype=torch.bool)
        allowed[self.special[self.special < vocab_size]] = False
        self.replacements = allowed.nonzero().squeeze(1)  # ids a random replacement may take

    def num_masked(self, seq_len: int) -> int:
        """Masked slots per sequence of ``seq_len`` tokens (at least one)."""
        return max(1, round(self.p * seq_len))

    def __call__(
        self, ids: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"ids must be (batch, seq_len) with seq_len ≥ 1, got shape {tuple(ids.shape)}")
        device = ids.device
        (B, T), k = ids.shape, self.num_masked(ids.shape[1])
        draw_device = generator.device if generator is not None else device

        def draw(fn, *args) -> torch.Tensor:
            return fn(*args, generator=generator, device=draw_device).to(device)

        order_key = draw(torch.rand, (B, T))  # a random order of positions
        action = draw(torch.rand, (B, k))  # [MASK] / random / keep, per slot
        pick = draw(torch.randint, len(self.replacements), (B, k))
        special = torch.isin(ids, self.special.to(device))
        # Special positions sort after every maskable one, so the first k of the random order are k
        # uniform maskable positions, or all of them followed by special ones (then ignored).
        order = torch.sort(order_key + special.to(order_key.dtype), dim=1, stable=True).indices
        positions = order[:, :k].contiguous()
        originals = ids.gather(1, positions)
        real = ~special.gather(1, positions)
        labels = torch.where(real, originals, torch.full_like(originals, IGNORE_INDEX))
        replaced = torch.where(action < self.random_cut, self.replacements.to(device)[pick], originals)
        replaced = torch.where(action < self.mask_cut, torch.full_like(originals, self.mask_id), replaced)
        inputs = ids.scatter(1, positions, torch.where(real, replaced, originals))
        return {"input_ids": inputs, "masked_positions": positions, "labels": labels}


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


def uses_bert_family(data_cfg: Mapping) -> bool:
    """Whether the data config asks for the BERT / RoBERTa recipes' models and batches (``BertForPreTraining``
    and the collators below): recipe=bert or recipe=roberta."""
    return data_cfg.get("masking", "crammed") == "bert" or wants_nsp(data_cfg)


def wants_nsp(data_cfg: Mapping) -> bool:
    """Whether the data config pairs segments for next-sentence prediction (``data.objective=nsp``)."""
    return data_cfg.get("objective", "mlm") == "nsp"


def build_collator(data_cfg: Mapping, vocab_size: int, special_ids: dict[str, int]):
    """The recipe's collator for ``data.masking=bert``: pairs for ``objective=nsp``, packed rows otherwise."""
    kind = PairCollator if wants_nsp(data_cfg) else RobertaCollator
    return kind(vocab_size, special_ids, float(data_cfg["mlm_probability"]))
