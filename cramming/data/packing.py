"""Packing documents into fixed-length sequences, and reading packed sequences back from disk.

Every document is followed by ``[SEP]`` and the documents are concatenated into one token stream, so
documents run across sequence boundaries and a ``[SEP]`` marks each document end. Two layouts
(``data.cls_per_sequence``):

- ``false`` (the reference's: ``include_cls_token_in_corpus: False``): each sequence is ``seq_len``
  consecutive stream tokens; the remainder of a split that does not fill a sequence is dropped.
- ``true``: each sequence is ``[CLS] body [SEP]`` with ``seq_len - 2`` body tokens; only the very last
  sequence of a split is padded with ``[PAD]``, so no token is lost.

Either way, unframing the sequences (``Packer.unframe``), dropping the final padding and splitting at
``[SEP]`` gives the documents' tokens back in order.
"""

from __future__ import annotations

import numpy as np


def storage_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocab ≤ 65536), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def token_stream(ids: list[list[int]] | list[np.ndarray], sep_id: int) -> np.ndarray:
    """The documents' ids concatenated with ``[SEP]`` after each one (int32)."""
    lengths = np.fromiter((len(d) for d in ids), np.int64, len(ids))
    if not len(ids):
        return np.zeros(0, np.int32)
    flat = np.concatenate([np.asarray(d, np.int32) for d in ids]) if lengths.sum() else np.zeros(0, np.int32)
    return np.insert(flat, np.cumsum(lengths), sep_id).astype(np.int32, copy=False)


def stream_from_flat(flat: np.ndarray, offsets: np.ndarray, keep: np.ndarray, sep_id: int) -> np.ndarray:
    """``token_stream`` of the kept documents, where document i's ids are ``flat[offsets[i]:offsets[i+1]]``."""
    lengths = np.diff(offsets)
    kept_flat = flat[np.repeat(keep, lengths)]
    return np.insert(kept_flat, np.cumsum(lengths[keep]), sep_id).astype(np.int32, copy=False)


class Packer:
    """Turns a token stream into full ``(n, seq_len)`` sequences, carrying the remainder to the next call."""

    def __init__(
        self,
        seq_len: int,
        special_ids: dict[str, int],
        carry: np.ndarray | None = None,
        cls_per_sequence: bool = True,
    ):
        if cls_per_sequence and seq_len < 3:
            raise ValueError(f"seq_len={seq_len} is too short; packing needs at least 3 ([CLS] x [SEP]).")
        self.seq_len, self.framed = seq_len, bool(cls_per_sequence)
        self.body = seq_len - 2 if self.framed else seq_len
        self.cls, self.sep, self.pad = special_ids["cls"], special_ids["sep"], special_ids["pad"]
        self.carry = np.zeros(0, np.int32) if carry is None else np.asarray(carry, np.int32)
        self.dropped = 0  # stream tokens left over at ``finish`` and dropped (unframed layout only)

    def add(self, stream: np.ndarray) -> np.ndarray:
        """Append stream tokens; return every full sequence now available, (n, seq_len) int32."""
        stream = np.concatenate([self.carry, stream]) if len(self.carry) else stream
        n = len(stream) // self.body
        self.carry = stream[n * self.body :].copy()
        return self._frame(stream[: n * self.body].reshape(n, self.body))  # (n, body) -> (n, seq_len)

    def finish(self) -> np.ndarray:
        """The last sequence, if tokens remain: padded when framed, dropped (none) when not; (0 or 1, seq_len)."""
        rest, self.carry = self.carry, np.zeros(0, np.int32)
        if not len(rest) or not self.framed:
            self.dropped += len(rest)
            return np.zeros((0, self.seq_len), np.int32)
        body = np.full((1, self.body), self.pad, np.int32)
        body[0, : len(rest)] = rest
        return self._frame(body)

    def unframe(self, sequences: np.ndarray) -> np.ndarray:
        """The stream tokens of ``sequences`` (n, seq_len), in order: the bodies without [CLS] ... [SEP]."""
        sequences = np.asarray(sequences)
        return (sequences[:, 1:-1] if self.framed else sequences).reshape(-1)

    def _frame(self, bodies: np.ndarray) -> np.ndarray:
        if not self.framed:
            return np.ascontiguousarray(bodies, np.int32)
        seqs = np.empty((len(bodies), self.seq_len), np.int32)
        seqs[:, 0] = self.cls
        seqs[:, 1:-1] = bodies
        seqs[:, -1] = self.sep
        return seqs


def unpack_documents(
    sequences: np.ndarray, special_ids: dict[str, int], cls_per_sequence: bool = True
) -> list[np.ndarray]:
    """Inverse of packing: the documents' token ids, in order (for tests and inspection).

    A document cut off by the dropped remainder (``cls_per_sequence=False``) has no closing ``[SEP]``
    and is not returned.
    """
    sequences = np.asarray(sequences)
    stream = Packer(sequences.shape[1], special_ids, cls_per_sequence=cls_per_sequence).unframe(sequences)
    end = len(stream)
    while end and stream[end - 1] == special_ids["pad"]:
        end -= 1
    stream = stream[:end]
    cuts = np.flatnonzero(stream == special_ids["sep"])
    starts = np.concatenate([[0], cuts[:-1] + 1])
    return [stream[s:e] for s, e in zip(starts, cuts)]


class PackedSequences:
    """Read-only view of packed sequences held in memory-mapped shard files.

    ``len()`` is the number of sequences; ``[i]`` gives (seq_len,) and ``[index array or slice]`` gives
    (n, seq_len), both int64. ``order`` (optional) is a permutation applied to logical indices
    (a curriculum ordering); ``ordered`` says whether one is present.
    """

    def __init__(
        self, shard_paths: list, shard_sizes: list[int], seq_len: int, dtype, order: np.ndarray | None = None
    ):
        self.seq_len, self.dtype = seq_len, np.dtype(dtype)
        self.shards = [
            np.memmap(p, dtype=self.dtype, mode="r", shape=(n, seq_len))
            for p, n in zip(shard_paths, shard_sizes)
            if n
        ]
        self.offsets = np.concatenate([[0], np.cumsum([len(s) for s in self.shards])]).astype(np.int64)
        self.order = order
        self.ordered = order is not None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self.gather(np.array([index]))[0]
        if isinstance(index, slice):
            return self.gather(np.arange(len(self))[index])
        return self.gather(np.asarray(index, np.int64))

    def gather(self, index: np.ndarray) -> np.ndarray:
        n = len(self)
        if index.size and (index.min() < -n or index.max() >= n):
            raise IndexError(f"sequence index out of range for {n} sequences")
        index = np.where(index < 0, index + n, index)
        if self.order is not None:
            index = self.order[index]
        out = np.empty((len(index), self.seq_len), np.int64)
        shard_of = np.searchsorted(self.offsets, index, side="right") - 1
        for s in np.unique(shard_of):
            rows = np.flatnonzero(shard_of == s)
            out[rows] = self.shards[s][index[rows] - self.offsets[s]]
        return out

    def iter_chunks(self, rows: int = 65536):
        """Physical (storage-order) chunks of (≤rows, seq_len) in the stored dtype, for one pass over the data."""
        for shard in self.shards:
            for start in range(0, len(shard), rows):
                yield np.asarray(shard[start : start + rows])
