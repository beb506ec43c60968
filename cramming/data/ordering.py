"""``ordering: quality``: train sequences ordered by a quality proxy (design §4).

The proxy is the mean token rarity of a sequence, ``mean(-log p(token))`` over its non-special tokens,
with ``p`` the unigram frequency over the whole training split. Sequences of common words (fluent prose)
come first; sequences dense in rare sub-word pieces (tables, lists of names, numbers, foreign text) come
last, so a budgeted run that does not finish an epoch sees the noisiest text least. This follows the
reference's unigram-frequency curriculum. Two passes over the shards, in chunks: memory is the counts
(vocab floats) plus one float and one int64 per sequence.
"""

from __future__ import annotations

import numpy as np

from cramming.data.packing import PackedSequences


def unigram_rarity(seqs: PackedSequences, vocab_size: int, special: list[int]) -> np.ndarray:
    """``-log p(token)`` per token id; 0 for special ids so they do not count."""
    counts = np.zeros(vocab_size, np.int64)
    for chunk in seqs.iter_chunks():
        counts += np.bincount(chunk.reshape(-1), minlength=vocab_size)[:vocab_size]
    counts[special] = 0
    probs = (counts + 1) / (counts.sum() + vocab_size)  # add-one: unseen ids are rare, not infinite
    rarity = -np.log(probs)
    rarity[special] = 0.0
    return rarity


def sequence_scores(seqs: PackedSequences, rarity: np.ndarray, special: list[int]) -> np.ndarray:
    """Mean rarity of each sequence's non-special tokens, in storage order."""
    is_special = np.zeros(len(rarity), bool)
    is_special[special] = True
    scores = np.empty(len(seqs), np.float32)
    row = 0
    for chunk in seqs.iter_chunks():
        ids = chunk.astype(np.int64)
        n_real = np.maximum((~is_special[ids]).sum(axis=1), 1)
        scores[row : row + len(chunk)] = rarity[ids].sum(axis=1) / n_real
        row += len(chunk)
    return scores


def quality_order(seqs: PackedSequences, vocab_size: int, special: list[int]) -> np.ndarray:
    """A permutation of sequence indices, most common-word (cleanest) text first."""
    scores = sequence_scores(seqs, unigram_rarity(seqs, vocab_size, special), special)
    return np.argsort(scores, kind="stable").astype(np.int64)
