"""BERT's sentence-pair examples for next-sentence prediction (``data.objective=nsp``, recipe=bert).

As the reference ``create_pretraining_data.py`` (Devlin et al. 2019): each document is a list of
sentences; sentences are gathered until a target length (``seq_len - 3``, or with probability
``short_seq_prob`` a random shorter one), the gathered chunk is cut at a random sentence boundary into
A and B (a chunk holds at least two sentences unless the document ends; our change, so that
half the pairs stay true pairs at short ``seq_len``); with probability 0.5 (always when the chunk holds
one sentence) B is replaced by a random
stretch of another document, and the sentences it would have used are put back. The longer segment
loses one token at a time, from the front or the back at random, until ``[CLS] A [SEP] B [SEP]`` fits.

Documents are read in windows of ``WINDOW_DOCUMENTS`` (memory stays bounded); "another document" is
drawn from the current and the previous window, as the reference draws from its own input shard.

Each stored row has ``seq_len + 3`` columns: the padded ids, then ``b_start`` (the index of B's first
token, so token types are 0 before it), ``length`` (real tokens, [PAD] after) and ``is_random``
(transformers' ``next_sentence_label``: 0 = B follows A, 1 = B is random).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from cramming.data import cache
from cramming.data.encode import parallel_encode
from cramming.data.filters import DocumentFilter, HashIndex
from cramming.data.packing import storage_dtype
from cramming.data.tokenizer import special_ids

EXTRA_COLUMNS = 3  # b_start, length, is_random
WINDOW_DOCUMENTS = 50_000
SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
Document = list[np.ndarray]  # one int32 array of token ids per sentence


def row_width(seq_len: int) -> int:
    return seq_len + EXTRA_COLUMNS


def split_sentences(document: str) -> list[str]:
    """Sentences of a document: paragraphs (lines) cut after ``. ! ?`` followed by white space."""
    out = []
    for paragraph in document.split("\n"):
        out.extend(s for s in SENTENCE_END.split(paragraph) if s.strip())
    return out


class SentenceBatch(list):
    """Sentences of several documents, with ``doc_sizes`` (sentences per document) and ``doc_chars``."""

    doc_sizes: list[int]
    doc_chars: list[int]


def sentence_batches(documents: Iterable[str], batch_documents: int) -> Iterator[SentenceBatch]:
    batch, sizes, chars = SentenceBatch(), [], []
    for doc in documents:
        sentences = split_sentences(doc)
        batch.extend(sentences)
        sizes.append(len(sentences))
        chars.append(len(doc))
        if len(sizes) == batch_documents:
            batch.doc_sizes, batch.doc_chars = sizes, chars
            yield batch
            batch, sizes, chars = SentenceBatch(), [], []
    if sizes:
        batch.doc_sizes, batch.doc_chars = sizes, chars
        yield batch


def documents_of(batch: SentenceBatch, flat: np.ndarray, offsets: np.ndarray, filt: DocumentFilter):
    """The kept documents of one encoded batch, each a list of non-empty sentence id arrays."""
    bounds = np.concatenate([[0], np.cumsum(batch.doc_sizes)]).astype(np.int64)
    keep = filt(np.asarray(batch.doc_chars, np.int64), flat, offsets[bounds])
    docs = []
    for d in np.flatnonzero(keep):
        sentences = [flat[offsets[s] : offsets[s + 1]] for s in range(bounds[d], bounds[d + 1])]
        sentences = [s for s in sentences if len(s)]
        if sentences:
            docs.append(sentences)
    return docs


def truncate_pair(a: list, b: list, max_tokens: int, rng: np.random.Generator) -> None:
    """Drop tokens from the longer segment, front or back at random, until both fit (in place)."""
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def pairs_from_document(
    index: int, pool: list[Document], seq_len: int, short_seq_prob: float, rng: np.random.Generator
) -> Iterator[tuple[list[int], list[int], int]]:
    """(A ids, B ids, is_random) examples from ``pool[index]``; random B segments come from the others."""
    document, max_tokens = pool[index], seq_len - 3
    target = max_tokens
    if rng.random() < short_seq_prob:
        target = int(rng.integers(2, max_tokens + 1))
    chunk, length, i = [], 0, 0
    while i < len(document):
        chunk.append(document[i])
        length += len(document[i])
        # Unlike the reference, a chunk closes with at least two sentences when the document has them, so
        # one long sentence does not force a random B (that pushed 'random' well above half at seq_len 64).
        if i == len(document) - 1 or (length >= target and len(chunk) >= 2):
            a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
            a = [int(t) for s in chunk[:a_end] for t in s]
            if len(chunk) == 1 or rng.random() < 0.5:
                b, is_random = random_segment(index, pool, target - len(a), rng), 1
                i -= len(chunk) - a_end  # the unused sentences start the next chunk
            else:
                b, is_random = [int(t) for s in chunk[a_end:] for t in s], 0
            truncate_pair(a, b, max_tokens, rng)
            yield a, b, is_random
            chunk, length = [], 0
        i += 1


def random_segment(index: int, pool: list[Document], target: int, rng: np.random.Generator) -> list[int]:
    """Sentences from a random point of another document of the pool, up to ``target`` tokens (≥ 1 sentence)."""
    other = int(rng.integers(len(pool) - 1))
    other += other >= index  # any document but this one
    doc = pool[other]
    out: list[int] = []
    for sentence in doc[int(rng.integers(len(doc))) :]:
        out.extend(int(t) for t in sentence)
        if len(out) >= target:
            break
    return out


def frame_pairs(examples: list[tuple[list[int], list[int], int]], seq_len: int, ids: dict[str, int]):
    """Rows of ``row_width(seq_len)``: [CLS] A [SEP] B [SEP] [PAD]..., b_start, length, is_random."""
    rows = np.full((len(examples), row_width(seq_len)), ids["pad"], np.int64)
    for r, (a, b, is_random) in enumerate(examples):
        seq = [ids["cls"], *a, ids["sep"], *b, ids["sep"]]
        rows[r, : len(seq)] = seq
        rows[r, seq_len:] = (len(a) + 2, len(seq), is_random)
    return rows


def _enough_documents(name: str, total_docs: int, filt: DocumentFilter, log) -> bool:
    """Whether a split has the two documents "random next" segments need; train must, others may not."""
    if total_docs >= 2:
        return True
    if name != "train":  # documented fallback: no held-out pairs, no validation loss
        if log is not None:
            log(f"data: {name}: fewer than two documents survived the filters; no sentence pairs held out")
        return False
    raise ValueError(
        f"data.objective=nsp (recipe=bert) needs at least two documents in the {name} split to draw "
        f"random 'next' segments from, but {total_docs} survived the filters "
        f"({filt.stats.to_dict()['removed']}); give more documents (blank lines separate them in .txt "
        "files), or use data.objective=mlm."
    )


def build_pair_split(
    name: str,
    documents: Iterable[str],
    cfg: dict[str, Any],
    tok: Tokenizer,
    entry: Path,
    log,
    exclude: HashIndex | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sentence-pair examples of one split, written as shards (same contract as ``prepare.build_split``;
    ``exclude``: hashes of documents to drop, the validation split's when this is train).

    Not resumable mid-split (a rerun starts the split again). "Random next" segments need another
    document: with fewer than two documents the train split is a ValueError, and a validation split is
    left empty (a warning; the run reports no validation loss).
    """
    seq_len, ids = int(cfg["seq_len"]), special_ids(tok)
    rng = np.random.default_rng([PAIRS_SEED, 0 if name == "train" else 1])
    filt = DocumentFilter(cfg["filters"], vocab_size=tok.get_vocab_size(), exclude=exclude)
    writer = cache.ShardWriter(
        entry, name, row_width(seq_len), storage_dtype(cfg["vocab_size"]), cfg["shard_sequences"]
    )
    progress = {"docs": 0, "chars": 0, "tokens": 0, "pairs": {"is_next": 0, "random": 0}}
    start, previous, window, total_docs = time.perf_counter(), [], [], 0
    try:
        batches = sentence_batches(documents, int(cfg["batch_documents"]))
        workers = int(cfg["num_workers"]) or 1
        for batch, (flat, offsets) in parallel_encode(batches, tok, workers):
            progress["docs"] += len(batch.doc_sizes)
            progress["chars"] += sum(batch.doc_chars)
            docs = documents_of(batch, flat, offsets, filt)
            progress["tokens"] += sum(len(s) for d in docs for s in d)
            window.extend(docs)
            if len(window) >= WINDOW_DOCUMENTS:
                _write_window(window, previous, cfg, ids, rng, writer, progress)
                total_docs += len(window)
                previous, window = window, []
        total_docs += len(window)
        if not _enough_documents(name, total_docs, filt, log):
            window = []
        _write_window(window, previous, cfg, ids, rng, writer, progress)
        writer.finish_shard()
    except BaseException:
        writer.abort()
        raise
    progress["seconds"] = time.perf_counter() - start
    sequences = sum(s["sequences"] for s in writer.shards)
    record = {"sequences": sequences, "shards": writer.shards}
    stats = {**progress, "sequences": sequences, "filters": filt.stats.to_dict()}
    if log is not None:
        log(
            f"data: {name}: {sequences} sentence pairs ({progress['pairs']}) from {progress['docs']} documents"
        )
    return record, stats


def _write_window(window, previous, cfg, ids, rng, writer, progress) -> None:
    """Examples from every document of ``window``; random segments from ``window + previous``."""
    pool = window + previous
    if len(pool) < 2 or not window:
        return
    seq_len, examples = int(cfg["seq_len"]), []
    for index in range(len(window)):
        examples.extend(pairs_from_document(index, pool, seq_len, float(cfg["short_seq_prob"]), rng))
    random = sum(e[2] for e in examples)
    progress["pairs"]["random"] += random
    progress["pairs"]["is_next"] += len(examples) - random
    rows = frame_pairs(examples, seq_len, ids)
    i = 0
    while i < len(rows):
        take = min(len(rows) - i, writer.room())
        writer.write(rows[i : i + take])
        i += take
        if writer.room() == 0:
            writer.finish_shard()


PAIRS_SEED = 12345
