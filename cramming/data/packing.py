"""Packing documents into fixed-length sequences, and reading packed sequences back from disk.

Two packings (``data.packing``):

``stream`` (the crammed and BERT MLM default): every document is followed by ``[SEP]`` and the documents
are concatenated into one token stream, so documents run across sequence boundaries and a ``[SEP]``
marks each document end. Two layouts (``data.cls_per_sequence``):

- ``false`` (the reference's: ``include_cls_token_in_corpus: False``): each sequence is ``seq_len``
  consecutive stream tokens; the remainder of a split that does not fill a sequence is dropped.
- ``true``: each sequence is ``[CLS] body [SEP]`` with ``seq_len - 2`` body tokens; only the very last
  sequence of a split is padded with ``[PAD]``, so no token is lost.

Either way, unframing the sequences (``Packer.unframe``), dropping the final padding and splitting at
``[SEP]`` gives the documents' tokens back in order.

``full-sentences`` (RoBERTa's FULL-SENTENCES, ``recipe=roberta``; ``FullSentencePacker``): blocks of
whole sentences. Each block is ``<s>`` followed by consecutive sentences, crossing document
boundaries, appended while they fit in ``seq_len``; the rest of the block is ``<pad>``. As fairseq
binarizes RoBERTa's text (an end-of-sentence token after every input line, and a blank line between
documents, which becomes a lone ``</s>``), ``</s>`` closes every paragraph (our lines) and one more
``</s>`` closes every document: the paper's "extra separator token between documents". The packing
unit is a sentence (the paper's word; fairseq's unit is an input line, a paragraph here, which would
leave half a paragraph of padding per block on average); the separators stay with the sentence they
close, so a block never opens with a separator. A sentence longer than a block (``seq_len - 1``
tokens) is cut into block-sized pieces, each opening a block (fairseq drops such blocks at batching,
which loses the text).
"""

from __future__ import annotations

import re

import numpy as np

# A sentence ends after . ! ? (and closing quotes/brackets) where white space follows. The white space
# stays with the next sentence, so byte-level BPE encodes each piece as it encodes the whole paragraph.
SENTENCE_CUT = re.compile(r"[.!?][\"')\]]*(?=\s)")


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

    def resume_state(self, unwritten: np.ndarray) -> np.ndarray:
        """The carry from which a new packer regenerates ``unwritten`` (rows of the last ``add``) and the rest."""
        return np.concatenate([self.unframe(unwritten), self.carry])

    def _frame(self, bodies: np.ndarray) -> np.ndarray:
        if not self.framed:
            return np.ascontiguousarray(bodies, np.int32)
        seqs = np.empty((len(bodies), self.seq_len), np.int32)
        seqs[:, 0] = self.cls
        seqs[:, 1:-1] = bodies
        seqs[:, -1] = self.sep
        return seqs


def sentence_pieces(document: str) -> tuple[list[str], list[bool]]:
    """The sentences of ``document``, paragraph (line) by paragraph, and whether each ends its paragraph.

    Each sentence keeps the white space before it, so that joining the pieces of a line gives the line.
    """
    pieces, ends = [], []
    for paragraph in document.split("\n"):
        if not paragraph.strip():
            continue
        cuts = [m.end() for m in SENTENCE_CUT.finditer(paragraph)]
        bounds = [0, *(c for c in cuts if paragraph[c:].strip()), len(paragraph)]
        for start, stop in zip(bounds[:-1], bounds[1:]):
            pieces.append(paragraph[start:stop])
            ends.append(False)
        ends[-1] = True
    return pieces, ends


def sentence_units(
    flat: np.ndarray, offsets: np.ndarray, paragraph_end: np.ndarray, document_end: np.ndarray, sep: int
) -> tuple[np.ndarray, np.ndarray]:
    """Packing units: sentence i's ids ``flat[offsets[i]:offsets[i+1]]`` followed by ``</s>`` when it ends a
    paragraph and one more when it ends a document; (unit ids int32, unit offsets), empty units dropped."""
    lengths = np.diff(offsets)
    extra = paragraph_end.astype(np.int64) + document_end.astype(np.int64)  # separators after each sentence
    ends = np.repeat(offsets[1:], extra)  # insert positions: after each sentence's ids
    units = np.insert(np.asarray(flat, np.int32), ends, sep).astype(np.int32, copy=False)
    sizes = lengths + extra
    sizes = sizes[sizes > 0]
    return units, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


class FullSentencePacker:
    """RoBERTa's FULL-SENTENCES blocks: ``<s>`` + whole units while they fit, ``<pad>`` after (module doc).

    ``add(units, offsets)`` takes consecutive units (unit i is ``units[offsets[i]:offsets[i+1]]``) and
    returns every block closed so far, (n, seq_len) int32; the open block is carried to the next call.
    ``carry`` (from ``resume_state``) restores a packer exactly: length-prefixed block bodies, the last
    one the open block.
    """

    def __init__(self, seq_len: int, special_ids: dict[str, int], carry: np.ndarray | None = None):
        if seq_len < 2:
            raise ValueError(
                f"seq_len={seq_len} is too short; a full-sentences block needs at least 2 (<s> x)."
            )
        self.seq_len, self.room = seq_len, seq_len - 1
        self.cls, self.pad = special_ids["cls"], special_ids["pad"]
        self.dropped = 0  # never anything: the last block is padded (same contract as ``Packer``)
        bodies = _split_records(np.zeros(0, np.int32) if carry is None else np.asarray(carry, np.int32))
        self.pending, self.carry = bodies[:-1], bodies[-1] if bodies else np.zeros(0, np.int32)
        self._lengths = np.zeros(0, np.int64)  # body lengths of the rows the last ``add`` returned

    def add(self, units: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Append units; return the blocks closed so far, (n, seq_len) int32."""
        stream = np.concatenate([self.carry, np.asarray(units, np.int32)])
        spans, open_start = _block_spans(np.diff(offsets), len(self.carry), self.room)
        bodies = self.pending + [stream[a:b] for a, b in spans]
        self.pending, self.carry = [], stream[open_start:].copy()
        return self._frame(bodies)

    def finish(self) -> np.ndarray:
        """The open block, padded (0 or 1 rows, plus any restored pending ones)."""
        bodies = self.pending + ([self.carry] if len(self.carry) else [])
        self.pending, self.carry = [], np.zeros(0, np.int32)
        return self._frame(bodies)

    def resume_state(self, unwritten: np.ndarray) -> np.ndarray:
        """The carry that regenerates ``unwritten`` (the last rows ``add`` returned) and the open block."""
        lengths = self._lengths[len(self._lengths) - len(unwritten) :]
        bodies = [row[1 : 1 + n] for row, n in zip(np.asarray(unwritten), lengths)]
        return _join_records([*bodies, self.carry])

    def _frame(self, bodies: list[np.ndarray]) -> np.ndarray:
        rows = np.full((len(bodies), self.seq_len), self.pad, np.int32)
        rows[:, 0] = self.cls
        for row, body in zip(rows, bodies):
            row[1 : 1 + len(body)] = body
        self._lengths = np.fromiter((len(b) for b in bodies), np.int64, len(bodies))
        return rows


def _block_spans(sizes: np.ndarray, fill: int, room: int) -> tuple[list[tuple[int, int]], int]:
    """Greedy blocks over units of ``sizes`` tokens after ``fill`` tokens of an open block at stream start.

    Returns the closed blocks' (start, stop) stream spans and where the open block starts. A unit that
    does not fit closes the open block; a unit longer than ``room`` fills whole blocks with its pieces.
    """
    spans, start, pos = [], 0, fill
    for n in sizes.tolist():
        if fill + n <= room:
            fill, pos = fill + n, pos + n
            continue
        if fill:
            spans.append((start, pos))
        while n > room:  # an over-long sentence: one full block per piece of ``room`` tokens
            spans.append((pos, pos + room))
            pos, n = pos + room, n - room
        start, fill, pos = pos, n, pos + n
    return spans, start


def _join_records(bodies: list[np.ndarray]) -> np.ndarray:
    parts = [p for b in bodies for p in (np.array([len(b)], np.int32), np.asarray(b, np.int32))]
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def _split_records(carry: np.ndarray) -> list[np.ndarray]:
    out, i = [], 0
    while i < len(carry):
        n = int(carry[i])
        out.append(carry[i + 1 : i + 1 + n].copy())
        i += 1 + n
    return out


def block_bodies(blocks: np.ndarray, special_ids: dict[str, int]) -> list[np.ndarray]:
    """The tokens of full-sentences blocks without the opening ``<s>`` and the trailing ``<pad>``s."""
    out = []
    for row in np.asarray(blocks):
        real = np.flatnonzero(row != special_ids["pad"])
        out.append(row[1 : real[-1] + 1] if len(real) else row[1:1])
    return out


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
