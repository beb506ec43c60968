"""Document filters (design §4): too short, exact duplicates, and junk by tokens-per-character.

Each filter counts the documents, characters and tokens it removed. Duplicates are found by a 64-bit
hash of the tokenizer-normalised text, so texts differing only in case or accents count as duplicates.
The seen-hash index is a sorted uint64 array (8 bytes per kept document, plus 4 for its token count)
with a small unsorted tail merged in periodically, so membership checks are vectorised per batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FILTERS = ("too_short", "duplicate", "junk_ratio")


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
        out.removed = {k: FilterCounts(**d["removed"][k]) for k in FILTERS}
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


def text_hash(normalized: str) -> int:
    return int.from_bytes(hashlib.blake2b(normalized.encode("utf-8"), digest_size=8).digest(), "little")


class DocumentFilter:
    """Applies the filters to batches of documents; ``stats`` accumulates what was read, kept, removed."""

    def __init__(self, filters: dict[str, Any], normalizer, index: HashIndex | None = None):
        self.min_chars = int(filters.get("min_doc_chars") or 0)
        self.max_ratio = filters.get("max_tokens_per_char")
        self.dedup = bool(filters.get("dedup", False))
        self.normalizer = normalizer
        self.index = index if index is not None else HashIndex()
        self.stats = FilterStats()

    def before_tokenizing(self, docs: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
        """Indices of the documents to tokenize (short ones too, to count their tokens; not duplicates),
        and the pending state for ``after_tokenizing``."""
        lengths = np.fromiter((len(d) for d in docs), np.int64, len(docs))
        self.stats.documents_read += len(docs)
        self.stats.chars_read += int(lengths.sum())
        long_enough = lengths >= self.min_chars
        pending: dict[str, Any] = {"lengths": lengths, "long": long_enough}
        if not self.dedup:
            return np.arange(len(docs)), pending
        cand = np.flatnonzero(long_enough)
        hashes = np.fromiter(
            (text_hash(self.normalizer.normalize_str(docs[i])) for i in cand), np.uint64, len(cand)
        )
        uniq, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        seen, seen_tokens = self.index.lookup(uniq)
        is_first = np.zeros(len(cand), bool)
        is_first[first] = True
        dup = ~is_first | seen[inverse]
        pending.update(
            cand=cand, dup=dup, inverse=inverse, uniq=uniq, first=first, seen=seen, seen_tokens=seen_tokens
        )
        duplicate = np.zeros(len(docs), bool)
        duplicate[cand[dup]] = True
        return np.flatnonzero(~duplicate), pending

    def after_tokenizing(
        self, tokenized: np.ndarray, token_counts: np.ndarray, pending: dict[str, Any]
    ) -> np.ndarray:
        """Given the token counts of the tokenized documents, a mask over ``tokenized`` of those to pack."""
        lengths = pending["lengths"][tokenized]
        short = ~pending["long"][tokenized]
        self.stats.removed["too_short"].add(
            int(short.sum()), int(lengths[short].sum()), int(token_counts[short].sum())
        )
        junk = np.zeros(len(tokenized), bool)
        if self.max_ratio is not None:
            junk = ~short & (token_counts > self.max_ratio * np.maximum(lengths, 1))
            self.stats.removed["junk_ratio"].add(
                int(junk.sum()), int(lengths[junk].sum()), int(token_counts[junk].sum())
            )
        if self.dedup:
            self._record_duplicates(token_counts[~short], pending)
        keep = ~short & ~junk
        self.stats.documents_kept += int(keep.sum())
        self.stats.chars_kept += int(lengths[keep].sum())
        self.stats.tokens_kept += int(token_counts[keep].sum())
        return keep

    def _record_duplicates(self, cand_tokens: np.ndarray, pending: dict[str, Any]) -> None:
        """``cand_tokens``: token counts of the long-enough, non-duplicate documents, in order."""
        cand, dup, inverse, first = pending["cand"], pending["dup"], pending["inverse"], pending["first"]
        tokens_of_cand = np.zeros(len(cand), np.int64)
        tokens_of_cand[~dup] = cand_tokens
        # A duplicate's tokens are those of its first occurrence: identical normalised text, identical ids.
        first_tokens = np.where(pending["seen"], pending["seen_tokens"], tokens_of_cand[first])
        dup_tokens = first_tokens[inverse][dup]
        chars = int(pending["lengths"][cand[dup]].sum())
        self.stats.removed["duplicate"].add(int(dup.sum()), chars, int(dup_tokens.sum()))
        new = ~pending["seen"]
        self.index.add(pending["uniq"][new], first_tokens[new])
