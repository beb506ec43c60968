"""SequenceLoader sharding and resume, and MLM masking statistics (no corpus needed)."""

import numpy as np
import pytest
import torch

from cramming.data import MLMCollator, SequenceLoader
from cramming.models import IGNORE_INDEX

SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}


def ident_sequences(n: int, seq_len: int = 4) -> np.ndarray:
    """Row i is filled with i, so a batch tells which sequences it holds."""
    return np.repeat(np.arange(n, dtype=np.int64)[:, None], seq_len, axis=1)


def take(loader: SequenceLoader, count: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < count:
        ids.extend(next(loader)[:, 0].tolist())
    return ids


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_cover_every_sequence_once_per_epoch(world_size):
    n, batch = 103, 8  # 103 is prime: ranks get unequal shares
    seqs = ident_sequences(n)
    seen = []
    for rank in range(world_size):
        loader = SequenceLoader(seqs, batch, seed=5, rank=rank, world_size=world_size)
        share = len(loader.share(0))
        first_epoch = take(loader, share)[:share]
        seen.extend(first_epoch)
    assert sorted(seen) == list(range(n))


def test_epochs_are_reshuffled_and_seeded():
    seqs = ident_sequences(50)
    a = take(SequenceLoader(seqs, 10, seed=1), 100)
    b = take(SequenceLoader(seqs, 10, seed=1), 100)
    c = take(SequenceLoader(seqs, 10, seed=2), 100)
    assert a == b and a != c
    assert sorted(a[:50]) == sorted(a[50:]) == list(range(50))
    assert a[:50] != a[50:]


def test_batches_have_shape_and_dtype():
    loader = SequenceLoader(ident_sequences(20, seq_len=16), 6)
    batch = next(loader)
    assert batch.shape == (6, 16) and batch.dtype == torch.long


@pytest.mark.parametrize("stop", [1, 4, 13])
def test_cursor_resumes_exact_next_batch(stop):
    seqs = ident_sequences(37)
    run = SequenceLoader(seqs, 7, seed=3, rank=1, world_size=2)
    for _ in range(stop):  # crosses epoch boundaries for larger stops (18 per epoch on rank 1)
        next(run)
    state = run.state_dict()
    expected = [next(run) for _ in range(5)]
    resumed = SequenceLoader(seqs, 7, seed=3, rank=1, world_size=2)
    resumed.load_state_dict(state)
    for want in expected:
        assert torch.equal(next(resumed), want)


def test_cursor_counts_sequences_when_batch_size_changes():
    seqs = ident_sequences(40)
    run = SequenceLoader(seqs, 4, seed=0)
    next(run)
    run.batch_size = 6
    next(run)
    state = run.state_dict()
    want = next(run)
    resumed = SequenceLoader(seqs, 6, seed=0)
    resumed.load_state_dict(state)
    assert torch.equal(next(resumed), want)


def test_state_from_other_data_is_rejected():
    state = SequenceLoader(ident_sequences(10), 2).state_dict()
    with pytest.raises(ValueError, match="num_sequences"):
        SequenceLoader(ident_sequences(11), 2).load_state_dict(state)


def test_ordered_sequences_are_not_shuffled():
    class Ordered(np.ndarray):
        ordered = True

    seqs = ident_sequences(12).view(Ordered)
    assert take(SequenceLoader(seqs, 4), 12) == list(range(12))


def random_batch(gen: torch.Generator, vocab: int = 1000, shape=(512, 128)) -> torch.Tensor:
    ids = torch.randint(5, vocab, shape, generator=gen)
    ids[:, 0], ids[:, -1] = SPECIAL["cls"], SPECIAL["sep"]
    ids[:, shape[1] // 2] = SPECIAL["sep"]
    ids[-3:, shape[1] - 20 :] = SPECIAL["pad"]
    return ids


def chosen_mask(batch: dict, seq_len: int) -> torch.Tensor:
    """(B, T) True at the positions that carry a label."""
    real = batch["labels"] != IGNORE_INDEX
    return torch.zeros(real.shape[0], seq_len, dtype=torch.bool).scatter(1, batch["masked_positions"], real)


def test_masking_statistics():
    gen = torch.Generator().manual_seed(0)
    ids = random_batch(gen)
    batch = MLMCollator(1000, SPECIAL, mlm_probability=0.25)(ids, generator=gen)
    inputs = batch["input_ids"]
    special = torch.isin(ids, torch.tensor(list(SPECIAL.values())))
    chosen = chosen_mask(batch, ids.shape[1])
    assert not (chosen & special).any(), "special tokens must never be masked"
    assert torch.equal(inputs[special], ids[special])
    assert torch.equal(batch["labels"], ids.gather(1, batch["masked_positions"]))
    assert torch.equal(inputs[~chosen], ids[~chosen])
    assert (chosen.sum(1) == 32).all(), "every sequence has 100+ maskable tokens: exactly 32 of 128 masked"
    n = chosen.sum().item()
    masked = (inputs == SPECIAL["mask"]) & chosen
    kept = (inputs == ids) & chosen
    randomised = chosen & ~masked & ~kept
    assert abs(masked.sum().item() / n - 0.8) < 0.015
    assert abs(kept.sum().item() / n - 0.1) < 0.015  # includes ~0.1% random picks equal to the original
    assert abs(randomised.sum().item() / n - 0.1) < 0.015
    replaced = inputs[randomised]
    assert not torch.isin(replaced, torch.tensor(list(SPECIAL.values()))).any()
    assert replaced.min() >= 0 and replaced.max() < 1000


def test_masking_is_deterministic_given_generator():
    ids = random_batch(torch.Generator().manual_seed(1), shape=(8, 32))
    collate = MLMCollator(1000, SPECIAL)
    a = collate(ids, generator=torch.Generator().manual_seed(7))
    b = collate(ids, generator=torch.Generator().manual_seed(7))
    c = collate(ids, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert not torch.equal(a["masked_positions"], c["masked_positions"])


def test_collator_rejects_bad_probability():
    with pytest.raises(ValueError, match="mlm_probability"):
        MLMCollator(1000, SPECIAL, mlm_probability=1.5)
