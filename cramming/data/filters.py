"""Document filters, as the reference recipe cleans its corpus: too short, exact duplicates, and junk by tokens-per-character;
and, across splits, documents of the validation split (``in_validation``: dropped from train).

Each filter counts the documents, characters and tokens it removed. Duplicates are found by a 64-bit
hash of a document's token ids: the ids are a function of the tokenizer-normalised text, so texts that
differ only in case, accents, non-ASCII characters or whitespace count as duplicates.
The seen-hash index is a sorted uint64 array (8 bytes per kept document, plus 4 for its token count)
with a small unsorted tail merged in periodically, so membership checks are vectorised per batch.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FILTERS = ("too_short", "duplicate", "junk_ratio", "in_validation")


@dataclass
class FilterCounts:
    documents: int = 0
    chars: int = 0
    tokens: int = 0

    def add(self, documents: int, chars: int, tokens: int) -> None:
        self.documents += documents
        self.chars += chars
        self.tokens += tokens


@dataclass
class FilterStats:
    """Documents read and kept, and what each filter removed."""

    documents_read: int = 0
    documents_kept: int = 0
    chars_read: int = 0
    chars_kept: int = 0
    tokens_kept: int = 0
    removed: dict[str, FilterCounts] = field(default_factory=lambda: {k: FilterCounts() for k in FILTERS})

    def to_dict(self) -> dict[str, Any]:
        return {
            "documents_read": self.documents_read,
            "documents_kept": self.documents_kept,
            "chars_read": self.chars_read,
            "chars_kept": self.chars_kept,
            "tokens_kept": self.tokens_kept,
            "removed": {k: vars(v).copy() for k, v in self.removed.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FilterStats:
        out = cls(**{k: v for k, v in d.items() if k != "removed"})
        out.removed = {k: FilterCounts(**d["removed"].get(k, {})) for k in FILTERS}  # older states lack some
        return out

    def summary(self) -> str:
        parts = [f"{k}: {v.documents} docs / {v.tokens} tokens" for k, v in self.removed.items()]
        return f"kept {self.documents_kept}/{self.documents_read} documents; removed " + ", ".join(parts)


class HashIndex:
    """A set of uint64 hashes with a uint32 value each (the document's token count)."""

    def __init__(
        self, keys: np.ndarray | None = None, values: np.ndarray | None = None, merge_every: int = 1 << 18
    ):
        self.keys = np.zeros(0, np.uint64) if keys is None else keys.astype(np.uint64)
        self.values = np.zeros(0, np.uint32) if values is None else values.astype(np.uint32)
        self._tail_keys: list[np.ndarray] = []
        self._tail_values: list[np.ndarray] = []
        self._tail_size = 0
        self.merge_every = merge_every

    def __len__(self) -> int:
        return len(self.keys) + self._tail_size

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, values where found) for unique ``keys``."""
        self._merge()
        pos = np.searchsorted(self.keys, keys)
        pos_c = np.minimum(pos, max(len(self.keys) - 1, 0))
        found = (
            (pos < len(self.keys)) & (self.keys[pos_c] == keys)
            if len(self.keys)
            else np.zeros(len(keys), bool)
        )
        values = np.where(found, self.values[pos_c] if len(self.keys) else 0, 0)
        return found, values

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        self._tail_keys.append(keys.astype(np.uint64))
        self._tail_values.append(values.astype(np.uint32))
        self._tail_size += len(keys)
        if self._tail_size >= self.merge_every:
            self._merge()

    def _merge(self) -> None:
        if not self._tail_size:
            return
        keys = np.concatenate([self.keys, *self._tail_keys])
        values = np.concatenate([self.values, *self._tail_values])
        order = np.argsort(keys, kind="stable")
        self.keys, self.values = keys[order], values[order]
        self._tail_keys, self._tail_values, self._tail_size = [], [], 0

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        self._merge()
        return self.keys, self.values


def ids_hash(ids: np.ndarray) -> int:
    return int.from_bytes(hashlib.blake2b(ids.tobytes(), digest_size=8).digest(), "little")


def document_hashes(flat: np.ndarray, offsets: np.ndarray, which: np.ndarray | None = None) -> np.ndarray:
    """``ids_hash`` of documents ``which`` (default all), document i being ``flat[offsets[i]:offsets[i+1]]``."""
    which = np.arange(len(offsets) - 1) if which is None else which
    return np.fromiter((ids_hash(flat[offsets[i] : offsets[i + 1]]) for i in which), np.uint64, len(which))


REFERENCE_VOCAB = 32768


def junk_threshold(max_tokens_per_char: float | None, vocab_size: int | None) -> float | None:
    """The tokens-per-character bound for this vocabulary.

    The recipe's bound (0.25) holds for a 32768-token WordPiece vocabulary. A smaller vocabulary
    splits clean text into more pieces (about 0.31 tokens per character at 2048 on English
    Wikipedia), so the bound is scaled by ln(32768) / ln(V); otherwise every document of a
    small-vocabulary run would count as junk.
    """
    if max_tokens_per_char is None or not vocab_size or vocab_size >= REFERENCE_VOCAB:
        return max_tokens_per_char
    return float(max_tokens_per_char) * math.log(REFERENCE_VOCAB) / math.log(max(vocab_size, 2))


class DocumentFilter:
    """Applies the filters to tokenized batches; ``stats`` accumulates what was read, kept and removed.

    Each document is removed by the first filter it fails, in the order too_short, junk_ratio,
    in_validation, duplicate; only kept documents enter the duplicate index. ``exclude`` holds the
    hashes (``ids_hash``) of another split's documents (the validation split's, when this is train):
    a document among them is removed as ``in_validation``, whatever ``filters.dedup`` says, so no
    document is both trained on and held out.
    """

    def __init__(
        self,
        filters: dict[str, Any],
        index: HashIndex | None = None,
        vocab_size: int | None = None,
        exclude: HashIndex | None = None,
    ):
        self.min_chars = int(filters.get("min_doc_chars") or 0)
        self.max_ratio = junk_threshold(filters.get("max_tokens_per_char"), vocab_size)
        self.dedup = bool(filters.get("dedup", False))
        self.index = index if index is not None else HashIndex()
        self.exclude = exclude if exclude is not None and len(exclude) else None
        self.stats = FilterStats()

    def __call__(self, chars: np.ndarray, flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Keep mask for a batch: ``chars`` per document, token ids ``flat[offsets[i]:offsets[i+1]]``."""
        tokens = np.diff(offsets)
        self.stats.documents_read += len(chars)
        self.stats.chars_read += int(chars.sum())
        keep = np.ones(len(chars), bool)
        keep = self._remove("too_short", keep, chars < self.min_chars, chars, tokens)
        if self.max_ratio is not None:
            junk = tokens > self.max_ratio * np.maximum(chars, 1)
            keep = self._remove("junk_ratio", keep, junk, chars, tokens)
        if self.exclude is not None:
            held_out = self._held_out(keep, flat, offsets)
            keep = self._remove("in_validation", keep, held_out, chars, tokens)
        if self.dedup:
            keep = self._remove("duplicate", keep, self._duplicates(keep, flat, offsets), chars, tokens)
        self.stats.documents_kept += int(keep.sum())
        self.stats.chars_kept += int(chars[keep].sum())
        self.stats.tokens_kept += int(tokens[keep].sum())
        return keep

    def _remove(self, name: str, keep: np.ndarray, drop: np.ndarray, chars: np.ndarray, tokens: np.ndarray):
        drop = keep & drop
        self.stats.removed[name].add(int(drop.sum()), int(chars[drop].sum()), int(tokens[drop].sum()))
        return keep & ~drop

    def _held_out(self, keep: np.ndarray, flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Kept documents whose ids hash into ``exclude`` (the other split's documents)."""
        cand = np.flatnonzero(keep)
        hashes = document_hashes(flat, offsets, cand)
        uniq, inverse = np.unique(hashes, return_inverse=True)
        found, _ = self.exclude.lookup(uniq)
        out = np.zeros(len(keep), bool)
        out[cand[found[inverse]]] = True
        return out

    def _duplicates(self, keep: np.ndarray, flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Documents whose ids equal an earlier kept document's (in this batch or before); adds the rest."""
        cand = np.flatnonzero(keep)
        hashes = document_hashes(flat, offsets, cand)
        uniq, first = np.unique(hashes, return_index=True)
        seen, _ = self.index.lookup(uniq)
        is_first_new = np.zeros(len(cand), bool)
        is_first_new[first[~seen]] = True
        self.index.add(uniq[~seen], np.diff(offsets)[cand[first[~seen]]])
        dup = np.zeros(len(keep), bool)
        dup[cand[~is_first_new]] = True
        return dup
