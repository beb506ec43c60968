"""Dynamic MLM masking per batch (design §4): 25% of non-special tokens, 80/10/10 mask/random/keep."""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


class MLMCollator:
    """``inputs, labels = collate(ids, generator)``: BERT-style dynamic masking, deterministic given the generator.

    Each non-special token draws one uniform ``u``: it is chosen when ``u < p``; a chosen token becomes
    ``[MASK]`` when ``u < 0.8 p``, a random non-special token when ``0.8 p <= u < 0.9 p``, and stays
    itself otherwise. Labels hold the original id at chosen positions and -100 elsewhere. Special
    tokens ([CLS], [SEP], [PAD], ...) are never chosen.
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
        self.mask_cut, self.random_cut = self.p * mask_fraction, self.p * (mask_fraction + random_fraction)
        self.mask_id = int(special_ids["mask"])
        self.special = torch.tensor(sorted({int(v) for v in special_ids.values()}), dtype=torch.long)
        allowed = torch.ones(vocab_size, dtype=torch.bool)
        allowed[self.special[self.special < vocab_size]] = False
        self.replacements = allowed.nonzero().squeeze(1)  # ids a random replacement may take

    def __call__(
        self, ids: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        device = ids.device
        draw_device = generator.device if generator is not None else device
        u = torch.rand(ids.shape, generator=generator, device=draw_device).to(device)
        pick = torch.randint(len(self.replacements), ids.shape, generator=generator, device=draw_device).to(
            device
        )
        special = torch.isin(ids, self.special.to(device))
        chosen = (u < self.p) & ~special
        labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
        inputs = torch.where(chosen & (u < self.mask_cut), torch.full_like(ids, self.mask_id), ids)
        random_tokens = self.replacements.to(device)[pick]
        inputs = torch.where(chosen & (u >= self.mask_cut) & (u < self.random_cut), random_tokens, inputs)
        return inputs, labels
