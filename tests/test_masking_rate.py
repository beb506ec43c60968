"""The training masking rate is a config value (data.mlm_probability): 15, 25 (default), 30 or 40%."""

import pytest
import torch

from cramming.data import MLMCollator

SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}


@pytest.mark.parametrize("rate, masked", [(0.15, 19), (0.25, 32), (0.30, 38), (0.40, 51)])
def test_each_rate_masks_a_fixed_count_of_128(rate, masked):
    """Catches a rate that is not honoured exactly (the reference masks 32 of 128 at 25%)."""
    ids = torch.randint(5, 300, (3, 128), generator=torch.Generator().manual_seed(0))
    batch = MLMCollator(300, SPECIAL, rate)(ids, generator=torch.Generator().manual_seed(1))
    assert batch["labels"].shape == batch["masked_positions"].shape == (3, masked)
    changed = (batch["input_ids"] != ids).sum(1)
    assert bool((changed <= masked).all()) and bool(
        (changed >= 0.7 * masked).all()
    )  # 80% [MASK] + 10% random


def test_the_pretraining_loop_masks_at_data_mlm_probability(tiny_corpus, tmp_path, monkeypatch):
    """Catches the loop building its training collator with a hard-coded rate instead of the config's."""
    from test_resume import overrides, run_in_process

    seen = []
    real = MLMCollator.__call__

    def spy(self, ids, generator=None):
        out = real(self, ids, generator=generator)
        seen.append((self.p, ids.shape[1], out["labels"].shape[1]))
        return out

    monkeypatch.setattr(MLMCollator, "__call__", spy)
    run_in_process(overrides(tiny_corpus, tmp_path, "rate", "data.mlm_probability=0.4", budget="2steps"))
    assert (0.4, 32, 13) in seen  # seq_len 32: round(0.4 * 32) = 13 masked slots per sequence
