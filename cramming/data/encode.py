"""Encoding documents to token ids: an exact fast path around the WordPiece model, with a word cache.

For the recipe's normalisation (BERT clean-up, lowercase, NFD + strip accents, non-ASCII removed) the
normalised text is plain ASCII, and BERT pre-tokenisation of ASCII is the regex ``[a-z0-9]+|<one ASCII
punctuation char>``. So a batch is normalised with a few whole-text C calls (whitespace map, NFD, drop
non-ASCII, drop control characters, lowercase), split into words with one regex call, and each word's
ids come from a bounded cache (word -> ids) filled by the WordPiece model itself. Paragraphs holding a
literal special token (``[SEP]`` ...), which the tokenizer matches in the raw text, go through
``encode_batch`` unchanged. The ids equal ``tokenizer.encode_batch(docs, add_special_tokens=False)``
(the tests compare them on real text, accents, exotic spaces and control characters included); a
tokenizer with another normalisation gets ``encode_batch`` for everything (``fast_path_applies``).
"""

from __future__ import annotations

import multiprocessing
import re
import unicodedata
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import chain

import numpy as np
from tokenizers import Tokenizer

from cramming.data.tokenizer import SPECIAL_TOKENS

WORDS = re.compile(r"[a-z0-9]+|[!-/:-@\[-`{-~]|\n")  # a word, one punctuation char, or a paragraph end
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # ASCII control chars BERT's clean-up removes
# Non-ASCII White_Space that is not a control char: BERT's clean-up turns it into a space (a word break).
SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")
SPECIAL_STRINGS = tuple(SPECIAL_TOKENS.values())
END = 0  # cache index of the paragraph-end marker (no tokens)


def normalize_ascii(text: str) -> str:
    """The recipe's BERT normalisation of ``text``, newlines kept (they mark paragraph ends)."""
    if not text.isascii():
        text = SPACES.sub(" ", text)
        text = unicodedata.normalize("NFD", text).encode("ascii", "ignore").decode("ascii")
    if CONTROL.search(text):
        text = CONTROL.sub("", text)
    return text.lower()


class Encoder:
    """``encode(docs) -> (flat int32 ids, offsets)``; document i is ``flat[offsets[i]:offsets[i+1]]``.

    The word cache holds at most ``max_words`` words and starts over when full (memory stays bounded).
    """

    def __init__(self, tok: Tokenizer, fast: bool | None = None, max_words: int = 1_000_000):
        self.tok, self.max_words = tok, max_words
        self.fast = fast_path_applies(tok) if fast is None else fast
        self._encode = getattr(tok, "encode_batch_fast", tok.encode_batch)  # _fast skips offsets
        self._reset()

    def _reset(self) -> None:
        self.index: dict[str, int] = {"\n": END}
        self.starts = np.zeros(1, np.int64)  # per cached word: where its ids start in self.ids
        self.lengths = np.zeros(1, np.int64)  # per cached word: how many ids
        self.ids = np.zeros(0, np.int32)

    def encode(self, docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
        pieces = [p for doc in docs for p in doc.split("\n")]
        per_doc = np.fromiter((doc.count("\n") + 1 for doc in docs), np.int64, len(docs))
        if self.fast:
            fast = np.fromiter((not _has_special(p) for p in pieces), bool, len(pieces))
        else:
            fast = np.zeros(len(pieces), bool)
        lengths = np.zeros(len(pieces), np.int64)
        slow_flat, lengths[~fast] = self._encode_slow([p for p, f in zip(pieces, fast) if not f])
        fast_flat, lengths[fast] = self._encode_fast([p for p, f in zip(pieces, fast) if f])
        flat = np.empty(int(lengths.sum()), np.int32)
        token_is_fast = np.repeat(fast, lengths)
        flat[token_is_fast], flat[~token_is_fast] = fast_flat, slow_flat
        piece_ends = np.concatenate([[0], np.cumsum(lengths)])
        return flat, piece_ends[np.concatenate([[0], np.cumsum(per_doc)])]

    def _encode_slow(self, pieces: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Paragraphs through the tokenizer (BERT pre-tokenisation splits at newlines anyway)."""
        encodings = self._encode(pieces, add_special_tokens=False)
        lengths = np.fromiter((len(e) for e in encodings), np.int64, len(encodings))
        flat = np.fromiter(chain.from_iterable(e.ids for e in encodings), np.int32, int(lengths.sum()))
        return flat, lengths

    def _encode_fast(self, pieces: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if not pieces:
            return np.zeros(0, np.int32), np.zeros(0, np.int64)
        words = WORDS.findall(normalize_ascii("\n".join(pieces)) + "\n")
        found = list(map(self.index.get, words))
        if None in found:
            found = self._add_missing(words, found)
        w = np.array(found, np.int64)
        counts = self.lengths[w]
        # Expand every word to its ids: token j of word k is ids[starts[k] + j].
        first = np.repeat(self.starts[w] - (np.cumsum(counts) - counts), counts)
        flat = self.ids[first + np.arange(int(counts.sum()))]
        ends = np.cumsum(counts)[w == END]
        return flat, np.diff(np.concatenate([[0], ends]))

    def _add_missing(self, words: list[str], found: list) -> list:
        missing = list({w for w, i in zip(words, found) if i is None})
        if len(self.index) + len(missing) > self.max_words:
            self._reset()
            missing = list({w for w in words if w not in self.index})
        model = self.tok.model
        ids = [[t.id for t in model.tokenize(word)] for word in missing]
        for word in missing:
            self.index[word] = len(self.index)
        lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
        new_ids = np.fromiter(chain.from_iterable(ids), np.int32, int(lengths.sum()))
        starts = len(self.ids) + np.cumsum(lengths) - lengths
        self.starts = np.concatenate([self.starts, starts])
        self.lengths = np.concatenate([self.lengths, lengths])
        self.ids = np.concatenate([self.ids, new_ids])
        return list(map(self.index.get, words))


def _has_special(piece: str) -> bool:
    return "[" in piece and any(s in piece for s in SPECIAL_STRINGS)


def fast_path_applies(tok: Tokenizer) -> bool:
    """Whether ``Encoder``'s fast path reproduces this tokenizer: recipe normalisation, BERT
    pre-tokenizer, a WordPiece model, no added tokens besides the special ones."""
    added = {t.content for t in tok.get_added_tokens_decoder().values()}
    if not added <= set(SPECIAL_STRINGS) or type(tok.model).__name__ != "WordPiece":
        return False
    probe = "Ab\u00e9\u00a0C,d\u4e2d\u00df\u2003x\x07y\tZ"
    if tok.normalizer is None or tok.normalizer.normalize_str(probe) != normalize_ascii(probe).replace(
        "\t", " "
    ):
        return False
    pre = tok.pre_tokenizer
    sample = "ab,c_d  e1 (x)"
    return pre is not None and [w for w, _ in pre.pre_tokenize_str(sample)] == WORDS.findall(sample)


# ----------------------------------------------------------------------------- worker processes

_WORKER: Encoder | None = None


def _worker_init(tokenizer_json: str) -> None:
    global _WORKER
    _WORKER = Encoder(Tokenizer.from_str(tokenizer_json))


def _worker_encode(docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return _WORKER.encode(docs)


def parallel_encode(
    batches: Iterator[list[str]], tok: Tokenizer, workers: int, inline: Callable | None = None
):
    """``(batch, (flat, offsets))`` for every batch, in order, encoded by ``workers`` processes.

    At most ``2 * workers`` batches are in flight, so memory stays bounded. A stream of a single batch
    is encoded in this process (no start-up cost for small corpora), and so is everything when
    ``workers <= 1``, through ``inline(encoder, docs)`` when given.
    """
    batches = iter(batches)
    first = next(batches, None)
    second = next(batches, None) if first is not None else None
    if second is None or workers <= 1:
        encoder, encode = Encoder(tok), inline or (lambda enc, docs: enc.encode(docs))
        head = [b for b in (first, second) if b is not None]
        for batch in chain(head, batches):
            yield batch, encode(encoder, batch)
        return
    context = multiprocessing.get_context("spawn")  # fork after tokenizers' threads started is unsafe
    pending: deque = deque()  # [batch, future] in order; a batch joins before it is submitted
    stream = chain([first, second], batches)
    try:
        with ProcessPoolExecutor(
            workers, context, initializer=_worker_init, initargs=(tok.to_str(),)
        ) as pool:
            for batch in stream:
                pending.append([batch, None])
                pending[-1][1] = pool.submit(_worker_encode, batch)
                while len(pending) >= 2 * workers or (pending and pending[0][1].done()):
                    yield pending[0][0], pending[0][1].result()
                    pending.popleft()
            while pending:
                yield pending[0][0], pending[0][1].result()
                pending.popleft()
    except BrokenProcessPool as err:
        # e.g. a script without an ``if __name__ == "__main__"`` guard cannot spawn workers
        warnings.warn(f"encoding workers failed ({err}); encoding in this process instead", stacklevel=2)
        encoder, encode = Encoder(tok), inline or (lambda enc, docs: enc.encode(docs))
        for batch in chain((b for b, _ in pending), stream):
            yield batch, encode(encoder, batch)
