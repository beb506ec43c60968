"""``prepare_corpus``: tokenizer + packed train/validation sequences, cached on disk by a config hash.

Flow: documents stream from the source (read in a background thread) → encoded in batches
by worker processes (``encode.Encoder``: exact fast path + word cache around the WordPiece model) →
filters (too short, tokens per character, in the validation split, duplicate token ids) → packing into
``seq_len`` sequences (``packing``; ``data.packing``: the cut document stream, ``data.cls_per_sequence``,
or RoBERTa's full-sentence blocks) → shard files → an optional curriculum order (``ordering``).
A document of the validation split is dropped from train (counted as ``in_validation`` in the log):
the validation documents are hashed first, as the train builder encodes them. A pre-tokenized corpus (``data.readymade``) streams its rows straight
into shard files (``readymade``). Memory stays bounded by a few batches in flight and each
worker's word cache (the dedup index adds 12 bytes per kept document). After every finished shard the
resume state is saved, so an interrupted preparation continues from its last finished shard.
"""

from __future__ import annotations

import json
import os
import queue
import resource
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from cramming.data import cache, readymade, sources
from cramming.data.config import as_dict, validate_data_config
from cramming.data.encode import Encoder, parallel_encode
from cramming.data.filters import DocumentFilter, FilterStats, HashIndex, document_hashes
from cramming.data.ordering import reverse_unigram_order, sentence_length_order
from cramming.data.packing import (
    FullSentencePacker,
    PackedSequences,
    Packer,
    sentence_pieces,
    sentence_units,
    storage_dtype,
    stream_from_flat,
)
from cramming.data.pairs import PAIRS_SEED, SentenceBatch, build_pair_split, row_width, sentence_batches
from cramming.data.tokenizer import (
    UNICODE_ALPHABET,
    attach_post_processor,
    sample_documents,
    special_ids,
    tokenizer_from_vocab,
    train_tokenizer,
)
from cramming.files import atomic_write, file_sha256, write_json

PIPELINE_VERSION = 3  # 3: junk bound scaled for small vocabularies
FULL_SENTENCES = "full-sentences"  # data.packing of recipe=roberta (packing.FullSentencePacker)
PERIOD = "."  # the token whose count orders sequences for ``ordering: sentence-length``
BATCH_CHARS = 8_000_000  # text per encode_batch call: enough work for every core, bounded memory
Log = Callable[[str], None] | None


def _quiet(_msg: str) -> None:
    pass


@dataclass
class PreparedCorpus:
    tokenizer: Tokenizer
    vocab_size: int
    seq_len: int
    special_ids: dict[str, int]
    train: PackedSequences
    valid: PackedSequences | None
    stats: dict[str, Any]
    cache_dir: Path
    key: str
    reused: bool = False
    cls_per_sequence: bool = True  # whether every train/valid sequence opens with [CLS] (packing layout)
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)


def prepare_corpus(data_cfg: Any, log: Log = print) -> PreparedCorpus:
    """Train (or reuse) the tokenizer and pack train/validation into cached ``seq_len`` sequences."""
    cfg = as_dict(data_cfg)
    validate_data_config(cfg)
    say = _quiet if log is None else log
    root = Path(cfg["cache_dir"]).expanduser()
    tok, tok_key = get_tokenizer(cfg, root, say)
    key = cache.config_key(corpus_identity(cfg, tok_key))
    entry = root / "corpora" / key
    with cache.file_lock(root / "corpora" / f"{key}.lock"):
        manifest, problem = cache.read_manifest(entry, full=cfg["verify"] == "full")
        reused = manifest is not None
        if reused:
            say(f"data: reusing cached corpus {key} at {entry}")
        else:
            if (entry / cache.MANIFEST).exists():
                say(f"data: cached corpus at {entry} is damaged ({problem}); rebuilding it")
                shutil.rmtree(entry)
            manifest = build_corpus(cfg, tok, key, entry, log)
    return load_corpus(entry, manifest, reused)


def corpus_key(data_cfg: Any) -> str:
    """The cache key ``prepare_corpus`` would use for this config (without building anything)."""
    cfg = as_dict(data_cfg)
    return cache.config_key(corpus_identity(cfg, tokenizer_key(cfg)))


def tokenizer_key(cfg: dict[str, Any]) -> str:
    if cfg["readymade"]:
        return readymade.tokenizer_key(cfg)
    if cfg["tokenizer"].get("path"):
        return file_sha256(Path(cfg["tokenizer"]["path"]).expanduser())[:16]
    return cache.config_key(tokenizer_identity(cfg))


def corpus_identity(cfg: dict[str, Any], tok_key: str) -> dict[str, Any]:
    """Everything that shapes the packed corpus; its hash is the cache key."""
    keys = ("text_column", "vocab_size", "seq_len", "filters", "ordering", "cls_per_sequence", "readymade")
    keys += ("shard_sequences",)
    ident = {"version": PIPELINE_VERSION, "input": sources.source_identity(cfg), "tokenizer": tok_key}
    if cfg.get("objective", "mlm") != "mlm":  # sentence pairs are another corpus (mlm keys stay as before)
        ident |= {"objective": cfg["objective"], "short_seq_prob": cfg["short_seq_prob"], "seed": PAIRS_SEED}
    if cfg.get("packing", "stream") != "stream":  # keys of the default packing stay as before
        ident["packing"] = cfg["packing"]
    if _has_validation(cfg):  # train loses the validation documents since cross-split deduplication
        ident["cross_split_dedup"] = 1
    return ident | {k: cfg[k] for k in keys}


def _has_validation(cfg: dict[str, Any]) -> bool:
    if cfg["source"] == "local":
        return bool(cfg["validation_files"])
    return bool(cfg.get("validation_split_documents"))


def tokenizer_identity(cfg: dict[str, Any]) -> dict[str, Any]:
    ident = sources.source_identity(cfg)
    ident.pop("validation_files", None)
    filters = {k: cfg["filters"].get(k) for k in ("min_doc_chars", "dedup")}
    return {"version": PIPELINE_VERSION, "input": ident, "text_column": cfg["text_column"]} | {
        "vocab_size": cfg["vocab_size"],
        "tokenizer": _tokenizer_options(cfg["tokenizer"]),
        "filters": filters,
    }


def _tokenizer_options(options: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer options that shape it; ``kind`` only when not the default (older keys stay valid)."""
    options = dict(options)
    if options.get("kind", "wordpiece") == "wordpiece":
        options.pop("kind", None)
        if not options.get("ascii_only", True):  # kept Unicode: trained with a bounded alphabet
            options["limit_alphabet"] = UNICODE_ALPHABET
    return options


def get_tokenizer(cfg: dict[str, Any], root: Path, say: Callable[[str], None]) -> tuple[Tokenizer, str]:
    """The WordPiece tokenizer trained on a bounded sample of the train stream, cached by config hash.

    ``tokenizer.path`` names an existing tokenizer.json to use instead (keyed by its content); a
    pre-tokenized corpus brings its own (``readymade.load_tokenizer``).
    """
    if cfg["readymade"]:
        return readymade.load_tokenizer(cfg, say)
    if cfg["tokenizer"].get("path"):
        path = Path(cfg["tokenizer"]["path"]).expanduser()
        return load_tokenizer_file(path, cfg["vocab_size"], say, cfg["tokenizer"])
    key = tokenizer_key(cfg)
    path = root / "tokenizers" / key / "tokenizer.json"
    with cache.file_lock(root / "tokenizers" / f"{key}.lock"):
        if path.is_file():
            try:
                tok = Tokenizer.from_file(str(path))
                special_ids(tok)
                say(f"data: reusing cached tokenizer {key} at {path}")
                return tok, key
            except Exception as err:  # a damaged file is retrained, never trusted
                say(f"data: cached tokenizer at {path} is unreadable ({err}); retraining it")
        start = time.perf_counter()
        sample = _sample_for_tokenizer(cfg)
        show = say is not _quiet and sys.stderr.isatty()
        tok = train_tokenizer(sample, cfg["vocab_size"], cfg["tokenizer"], show_progress=show)
        atomic_write(path, lambda tmp: tok.save(str(tmp)))
        say(
            f"data: trained {cfg['tokenizer'].get('kind', 'wordpiece')} tokenizer ({tok.get_vocab_size()} tokens) on ≤{cfg['tokenizer']['sample_mb']} MB "
            f"in {time.perf_counter() - start:.1f}s; cached as {key}"
        )
    return tok, key


def load_tokenizer_file(
    path: Path, vocab_size: int, say: Callable[[str], None], options: dict[str, Any] | None = None
) -> tuple[Tokenizer, str]:
    """A tokenizer.json, or a BERT WordPiece vocab.txt (normalised with ``options``, data.tokenizer)."""
    try:
        if path.suffix == ".txt":
            tok = tokenizer_from_vocab(str(path), options or {})
        else:
            tok = Tokenizer.from_file(str(path))
    except Exception as err:
        raise ValueError(
            f"data.tokenizer.path={str(path)!r} is not a readable tokenizer.json or WordPiece vocab.txt ({err})."
        ) from err
    try:
        special_ids(tok)
    except ValueError as err:
        raise ValueError(f"data.tokenizer.path={str(path)!r}: {err}") from err
    if tok.get_vocab_size() > vocab_size:
        raise ValueError(
            f"data.tokenizer.path={str(path)!r} has {tok.get_vocab_size()} tokens, more than "
            f"data.vocab_size={vocab_size}; give a vocab_size of at least that."
        )
    attach_post_processor(tok)
    key = file_sha256(path)[:16]  # as tokenizer_key
    say(f"data: using tokenizer {path} ({tok.get_vocab_size()} tokens, key {key})")
    return tok, key


def _sample_for_tokenizer(cfg: dict[str, Any]) -> Iterator[str]:
    """The head of the train stream up to ``sample_mb``, without short documents and exact repeats."""
    min_chars = int(cfg["filters"].get("min_doc_chars") or 0)
    seen: set[int] = set()

    def kept() -> Iterator[str]:
        for doc in sources.train_documents(cfg):
            if len(doc) < min_chars:
                continue
            if cfg["filters"].get("dedup"):
                h = hash(" ".join(doc.lower().split()))
                if h in seen:
                    continue
                seen.add(h)
            yield doc

    return sample_documents(kept(), cfg["tokenizer"]["sample_mb"])


def load_corpus(entry: Path, manifest: dict[str, Any], reused: bool) -> PreparedCorpus:
    tok = Tokenizer.from_file(str(entry / "tokenizer.json"))
    seq_len, dtype = manifest["seq_len"], manifest["dtype"]
    width = manifest.get("row_width", seq_len)  # sentence pairs carry extra columns (pairs.py)
    order = np.load(entry / manifest["order"]["file"]) if manifest.get("order") else None

    def split(name: str, order_=None) -> PackedSequences | None:
        rec = manifest["splits"].get(name)
        if rec is None:
            return None
        paths = [entry / s["file"] for s in rec["shards"]]
        return PackedSequences(paths, [s["sequences"] for s in rec["shards"]], width, dtype, order_)

    return PreparedCorpus(
        tokenizer=tok,
        vocab_size=manifest["vocab_size"],
        seq_len=seq_len,
        special_ids=manifest["special_ids"],
        train=split("train", order),
        valid=split("valid"),
        stats=manifest["stats"],
        cache_dir=entry,
        key=manifest["key"],
        reused=reused,
        cls_per_sequence=manifest.get("cls_per_sequence", True),
        manifest=manifest,
    )


def build_corpus(cfg: dict[str, Any], tok: Tokenizer, key: str, entry: Path, log: Log) -> dict[str, Any]:
    """Build (or resume building) every split, order, write stats and the manifest; returns the manifest."""
    say = _quiet if log is None else log
    entry.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if cfg["readymade"]:
        splits, stats = readymade.build_splits(cfg, entry, say, sep=special_ids(tok)["sep"])
    else:
        splits, stats = _build_text_splits(cfg, tok, entry, log)
    if not splits["train"]["sequences"]:
        raise ValueError(f"no training text survived the filters: {stats['train']['filters']}")
    atomic_write(entry / "tokenizer.json", lambda tmp: tok.save(str(tmp)))
    order = None if cfg["ordering"] == "none" else _write_order(entry, splits["train"], cfg, tok)
    summary = _summary(cfg, stats, start)
    write_json(entry / "stats.json", summary)
    manifest = {
        "key": key,
        "seq_len": cfg["seq_len"],
        "vocab_size": cfg["vocab_size"],
        "dtype": storage_dtype(cfg["vocab_size"]).name,
        "cls_per_sequence": cfg["cls_per_sequence"],
        "packing": cfg.get("packing", "stream"),
        "special_ids": special_ids(tok),
        "splits": splits,
        "tokenizer": cache.file_record(entry, "tokenizer.json"),
        "order": order,
        "stats": summary,
    }
    if cfg.get("objective", "mlm") == "nsp":
        manifest.update(objective="nsp", row_width=row_width(cfg["seq_len"]))
    cache.stamp_files(entry, cache.manifest_records(manifest))
    cache.write_manifest(entry, manifest)
    shutil.rmtree(entry / "progress", ignore_errors=True)
    say(_summary_line(summary, entry))
    return {**manifest, "checksum": cache.manifest_checksum(manifest)}


def _build_text_splits(cfg: dict[str, Any], tok: Tokenizer, entry: Path, log: Log) -> tuple[dict, dict]:
    train_docs, valid_docs = sources.split_streams(cfg)
    held_out = None if valid_docs is None else split_hashes(sources.valid_documents(cfg), cfg, tok)
    splits, stats = {}, {}
    builder = build_pair_split if cfg.get("objective", "mlm") == "nsp" else build_split
    for name, docs in (("train", train_docs), ("valid", valid_docs)):
        if docs is not None:
            exclude = held_out if name == "train" else None
            splits[name], stats[name] = builder(name, docs, cfg, tok, entry, log, exclude=exclude)
    return splits, stats


def split_hashes(documents: Iterable[str], cfg: dict[str, Any], tok: Tokenizer) -> HashIndex:
    """The ``ids_hash`` of every document of a split, its ids made as the split's builder makes them."""
    index = HashIndex()
    workers = cfg["num_workers"] or len(os.sched_getaffinity(0))
    for batch, (flat, offsets) in parallel_encode(document_batches(documents, cfg), tok, workers):
        doc_offsets = document_offsets(batch, offsets)
        index.add(document_hashes(flat, doc_offsets), np.diff(doc_offsets))
    return index


def document_batches(documents: Iterable[str], cfg: dict[str, Any]) -> Iterator[list[str]]:
    """The batches a split's builder encodes: documents (stream packing), or their sentences
    (``SentenceBatch``: NSP pairs, full-sentence blocks)."""
    size = int(cfg["batch_documents"])
    if cfg.get("objective", "mlm") == "nsp":
        return sentence_batches(documents, size)
    if cfg.get("packing", "stream") == FULL_SENTENCES:
        return _piece_batches(documents, size)
    return _batches(documents, size)


def document_offsets(batch: list[str], offsets: np.ndarray) -> np.ndarray:
    """Offsets of the batch's documents into its encoded ids (sentence batches: every document's sentences)."""
    if not isinstance(batch, SentenceBatch):
        return offsets
    return offsets[np.concatenate([[0], np.cumsum(batch.doc_sizes)]).astype(np.int64)]


def _piece_batches(
    documents: Iterable[str], size: int, max_chars: int = BATCH_CHARS
) -> Iterator[SentenceBatch]:
    """``SentenceBatch``es of ``sentence_pieces`` with ``paragraph_ends`` (one flag per sentence)."""
    batch, sizes, chars, ends, total = SentenceBatch(), [], [], [], 0
    for doc in documents:
        pieces, paragraph_ends = sentence_pieces(doc)
        batch.extend(pieces)
        ends.extend(paragraph_ends)
        sizes.append(len(pieces))
        chars.append(len(doc))
        total += len(doc)
        if len(sizes) == size or total >= max_chars:
            batch.doc_sizes, batch.doc_chars, batch.paragraph_ends = sizes, chars, ends
            yield batch
            batch, sizes, chars, ends, total = SentenceBatch(), [], [], [], 0
    if sizes:
        batch.doc_sizes, batch.doc_chars, batch.paragraph_ends = sizes, chars, ends
        yield batch


def _write_order(entry: Path, split: dict[str, Any], cfg: dict[str, Any], tok: Tokenizer) -> dict[str, Any]:
    """The train split's curriculum permutation (``data.ordering``), written as order.npy."""
    seqs = PackedSequences(
        [entry / s["file"] for s in split["shards"]],
        [s["sequences"] for s in split["shards"]],
        cfg["seq_len"],
        storage_dtype(cfg["vocab_size"]),
    )
    if cfg["ordering"] == "sentence-length":
        period = tok.token_to_id(PERIOD)
        if period is None:
            raise ValueError(
                f"data.ordering=sentence-length counts the {PERIOD!r} token, which this tokenizer lacks; "
                "use data.ordering=none or reverse-unigram."
            )
        order = sentence_length_order(seqs, period)
    else:
        order = reverse_unigram_order(seqs, cfg["vocab_size"], list(special_ids(tok).values()))
    atomic_write(entry / "order.npy", lambda tmp: np.save(open(tmp, "wb"), order))
    return cache.file_record(entry, "order.npy")


def _summary(cfg: dict[str, Any], stats: dict[str, Any], start: float) -> dict[str, Any]:
    train = stats["train"]
    seconds = sum(s["seconds"] for s in stats.values())
    return {
        "documents": train["filters"]["documents_kept"],
        "documents_read": train["filters"]["documents_read"],
        "tokens": train["filters"]["tokens_kept"],
        "sequences": train["sequences"],
        "valid_sequences": stats["valid"]["sequences"] if "valid" in stats else 0,
        "filters": {k: v["filters"]["removed"] for k, v in stats.items()},
        "splits": stats,
        "seconds": seconds,
        "mb_per_s": sum(s["chars"] for s in stats.values()) / 1e6 / max(seconds, 1e-9),
        "tokens_per_s": sum(s["tokens"] for s in stats.values()) / max(seconds, 1e-9),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ordering": cfg["ordering"],
    }


def _summary_line(s: dict[str, Any], entry: Path) -> str:
    removed = ", ".join(
        f"{k} {v['documents']} docs/{v['tokens']} tok" for k, v in s["filters"]["train"].items()
    )
    return (
        f"data: prepared {s['documents']}/{s['documents_read']} documents, {s['tokens']} tokens, "
        f"{s['sequences']} train + {s['valid_sequences']} valid sequences in {s['seconds']:.1f}s "
        f"({s['mb_per_s']:.2f} MB/s, {s['tokens_per_s']:.0f} tok/s, peak RSS {s['peak_rss_mb']:.0f} MB); "
        f"removed (train): {removed}; cache {entry}"
    )


# ----------------------------------------------------------------------------- one split, resumable


def _pack_documents(documents, cfg, tok, stages, progress: dict, start: float, bar, where) -> None:
    """Encode, filter, pack and write every document; ``progress`` and ``bar`` follow along."""
    filt, packer, writer = stages
    entry, name = where
    sep = special_ids(tok)["sep"]
    batches = _prefetch(document_batches(documents, cfg))
    workers = cfg["num_workers"] or len(os.sched_getaffinity(0))
    for batch, encoded in parallel_encode(batches, tok, workers, inline=encode_documents):
        seqs, chars, tokens = _filter_and_pack(batch, encoded, filt, packer, sep)
        progress["docs"] += len(batch.doc_sizes) if isinstance(batch, SentenceBatch) else len(batch)
        progress["chars"] += chars
        progress["tokens"] += tokens
        progress["seconds"] = time.perf_counter() - start
        _write_rows(seqs, writer, packer, filt, progress, entry, name)
        bar.update(chars)
        bar.set_postfix_str(
            f"{progress['tokens'] / max(progress['seconds'], 1e-9):,.0f} tok/s", refresh=False
        )


def build_split(
    name: str,
    documents: Iterable[str],
    cfg: dict[str, Any],
    tok: Tokenizer,
    entry: Path,
    log: Log,
    exclude: HashIndex | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pack one split into shards, saving the resume state after each finished shard.

    ``exclude``: hashes of documents to drop (the validation split's, when this is train)."""
    say = _quiet if log is None else log
    ids = special_ids(tok)
    state = load_progress(entry, name)
    if state.get("done"):
        say(f"data: {name} split already packed in {entry} (resumed preparation)")
        return state["record"], state["stats"]
    index = HashIndex(state["index_keys"], state["index_values"])
    filt = DocumentFilter(cfg["filters"], index, vocab_size=tok.get_vocab_size(), exclude=exclude)
    filt.stats = FilterStats.from_dict(state["filters"]) if state["filters"] else filt.stats
    packer = make_packer(cfg, ids, state["carry"])
    dtype = storage_dtype(cfg["vocab_size"])
    writer = cache.ShardWriter(entry, name, cfg["seq_len"], dtype, cfg["shard_sequences"], state["shards"])
    progress = dict(
        docs=state["docs"], chars=state["chars"], tokens=state["tokens"], seconds=state["seconds"]
    )
    if state["docs"]:
        say(
            f"data: resuming {name} from shard {len(writer.shards)} ({state['docs']} documents done) in {entry}"
        )
    start = time.perf_counter() - progress["seconds"]
    bar = _progress_bar(name, log)
    try:
        remaining = islice(documents, state["docs"], None)
        _pack_documents(remaining, cfg, tok, (filt, packer, writer), progress, start, bar, (entry, name))
        writer.write(packer.finish())
        writer.finish_shard()
        progress["tokens_dropped"] = packer.dropped  # the remainder that fills no sequence (unframed layout)
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    progress["seconds"] = time.perf_counter() - start
    sequences = sum(s["sequences"] for s in writer.shards)
    record = {"sequences": sequences, "shards": writer.shards}
    stats = {**progress, "sequences": sequences, "filters": filt.stats.to_dict()}
    write_json(entry / "progress" / f"{name}.json", {"done": True, "record": record, "stats": stats})
    return record, stats


def _batches(documents: Iterable[str], size: int, max_chars: int = BATCH_CHARS) -> Iterator[list[str]]:
    """Lists of up to ``size`` documents and about ``max_chars`` characters (bounds the memory of a batch)."""
    batch, chars = [], 0
    for doc in documents:
        batch.append(doc)
        chars += len(doc)
        if len(batch) == size or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _prefetch(batches: Iterator[list[str]], depth: int = 2) -> Iterator[list[str]]:
    """Read (decompress, split) the next batches in a thread while the current one is encoded.

    ``encode_batch`` releases the GIL, so reading overlaps with tokenizing; ``depth`` bounds the memory.
    """
    done = object()
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not offer(batch):
                    return
            offer(done)
        except BaseException as err:  # handed to the consumer, raised there
            offer(err)

    thread = threading.Thread(target=produce, name="cramming-data-reader", daemon=True)
    thread.start()
    try:
        while (item := slots.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def make_packer(cfg: dict[str, Any], ids: dict[str, int], carry: np.ndarray | None = None):
    """The packer of ``data.packing`` (``carry``: a saved ``resume_state``)."""
    if cfg.get("packing", "stream") == FULL_SENTENCES:
        return FullSentencePacker(cfg["seq_len"], ids, carry=carry)
    return Packer(cfg["seq_len"], ids, carry=carry, cls_per_sequence=cfg["cls_per_sequence"])


def _filter_and_pack(batch, encoded, filt: DocumentFilter, packer, sep: int):
    """Filter one encoded batch and pack what is kept; (full sequences, chars read, tokens kept)."""
    flat, offsets = encoded
    if isinstance(packer, FullSentencePacker):
        return _filter_and_pack_sentences(batch, flat, offsets, filt, packer, sep)
    chars = np.fromiter((len(d) for d in batch), np.int64, len(batch))
    keep = filt(chars, flat, offsets)
    stream = stream_from_flat(flat, offsets, keep, sep)
    return packer.add(stream), int(chars.sum()), int(np.diff(offsets)[keep].sum())


def _filter_and_pack_sentences(
    batch: SentenceBatch, flat, offsets, filt, packer: FullSentencePacker, sep: int
):
    """``_filter_and_pack`` for full-sentence blocks: the filters see documents, the packer sentences."""
    chars = np.asarray(batch.doc_chars, np.int64)
    sizes = np.asarray(batch.doc_sizes, np.int64)
    keep = filt(chars, flat, document_offsets(batch, offsets))
    kept = np.repeat(keep, sizes)  # per sentence
    lengths = np.diff(offsets)
    document_end = np.zeros(len(lengths), bool)
    document_end[np.cumsum(sizes)[sizes > 0] - 1] = True
    kept_offsets = np.concatenate([[0], np.cumsum(lengths[kept])]).astype(np.int64)
    units, unit_offsets = sentence_units(
        flat[np.repeat(kept, lengths)],
        kept_offsets,
        np.asarray(batch.paragraph_ends, bool)[kept],
        document_end[kept],
        sep,
    )
    return packer.add(units, unit_offsets), int(chars.sum()), int(lengths[kept].sum())


def encode_documents(encoder: Encoder, docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of ``docs`` (no special tokens) as one int32 array and document offsets into it."""
    return encoder.encode(docs)


def _write_rows(seqs, writer, packer, filt, progress, entry, name) -> None:
    """Write rows, closing a shard (and saving resume state) each time one fills up."""
    i = 0
    while i < len(seqs):
        take = min(len(seqs) - i, writer.room())
        writer.write(seqs[i : i + take])
        i += take
        if writer.room() == 0:
            writer.finish_shard()
            # The rows not yet written go back into the carry, so resuming regenerates them exactly.
            carry = packer.resume_state(seqs[i:])
            save_progress(entry, name, writer.shards, carry, filt, progress)


def _progress_bar(name: str, log: Log):
    from tqdm import tqdm

    quiet = log is None or not sys.stderr.isatty()
    return tqdm(
        desc=f"prepare {name}", unit="B", unit_scale=True, unit_divisor=1000, disable=quiet, leave=False
    )


# ----------------------------------------------------------------------------- resume state


def save_progress(entry: Path, name: str, shards, carry: np.ndarray, filt: DocumentFilter, progress) -> None:
    keys, values = filt.index.arrays()
    n = len(shards)
    arrays = entry / "progress" / f"{name}-{n:05d}.npz"
    cache.save_arrays(arrays, carry=carry.astype(np.int32), index_keys=keys, index_values=values)
    state = {"shards": shards, "filters": filt.stats.to_dict(), "arrays": arrays.name, **progress}
    write_json(entry / "progress" / f"{name}.json", state)
    for old in (entry / "progress").glob(f"{name}-*.npz"):
        if old != arrays:
            old.unlink(missing_ok=True)


def load_progress(entry: Path, name: str) -> dict[str, Any]:
    """The last saved state of a split (fresh state if none, or if its files do not check out)."""
    fresh = dict(docs=0, chars=0, tokens=0, seconds=0.0, shards=[], filters=None, carry=None)
    fresh.update(index_keys=None, index_values=None)
    path = entry / "progress" / f"{name}.json"
    if not path.is_file():
        return fresh
    try:
        state = json.loads(path.read_text())
        shards = state["record"]["shards"] if state.get("done") else state["shards"]
        problem = cache.verify_files(entry, shards, full=True)
        if not problem and not state.get("done"):
            with np.load(entry / "progress" / state["arrays"]) as arrays:
                state.update({k: arrays[k] for k in ("carry", "index_keys", "index_values")})
    except (OSError, ValueError, KeyError) as err:
        problem = f"unreadable ({err})"
    if problem:  # start this split over rather than trust a damaged state
        path.unlink(missing_ok=True)
        return fresh
    return state
