"""Curriculum orderings of the train sequences (``data.ordering``), as a permutation stored in the cache.

Ordered data is served in this order by ``SequenceLoader``, never shuffled (the reference's curricula).
Each ordering is exact: the cache holds the whole packed train split on disk, so the permutation is a
global sort over all of it, computed in chunked passes over the shards (memory: a few bytes per
sequence, not the corpus). Ties keep storage order (a stable sort), so the order is deterministic.

- ``sentence-length`` (the reference's final ``sentence-length-curriculum``): sequences by their count
  of the ``.`` token, most first.
- ``reverse-unigram`` (the reference's ``reverse-unigram-curriculum``): sequences by their mean token
  rarity ``mean(-log p(token))`` over non-special tokens, ``p`` the unigram frequency over the train
  split, most common-token sequences first. (The reference's ``unigram-curriculum`` is the opposite:
  rare-token sequences first.)
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


def reverse_unigram_order(seqs: PackedSequences, vocab_size: int, special: list[int]) -> np.ndarray:
    """A permutation of sequence indices, most common-token text first (lowest mean rarity)."""
    scores = sequence_scores(seqs, unigram_rarity(seqs, vocab_size, special), special)
    return _index_dtype(np.argsort(scores, kind="stable"), len(seqs))


def token_counts(seqs: PackedSequences, token_id: int) -> np.ndarray:
    """How often ``token_id`` occurs in each sequence, in storage order (int32)."""
    counts = np.empty(len(seqs), np.int32)
    row = 0
    for chunk in seqs.iter_chunks():
        counts[row : row + len(chunk)] = (chunk == token_id).sum(axis=1)
        row += len(chunk)
    return counts


def sentence_length_order(seqs: PackedSequences, period_id: int) -> np.ndarray:
    """A permutation of sequence indices, most ``.`` tokens first; ties in storage order."""
    counts = token_counts(seqs, period_id)
    return _index_dtype(np.argsort(-counts, kind="stable"), len(seqs))


def _index_dtype(order: np.ndarray, n: int) -> np.ndarray:
    # int32 halves the stored order (and its memory) for every corpus under 2**31 sequences.
    return order.astype(np.int32 if n < 2**31 else np.int64)
