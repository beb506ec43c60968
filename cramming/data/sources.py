"""Documents as a stream of strings, from local files or a hub dataset; nothing holds the whole corpus.

Plain text: one paragraph per line, a blank line between documents; a document is its paragraphs joined
with newlines. JSONL and Parquet: one document per record, in ``text_column``. A pre-tokenized hub
corpus (``data.readymade``) streams rows of token ids instead (``hub_token_rows``).
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from cramming.data.config import expand_paths, file_extension

PARQUET_BATCH_ROWS = 1024


def iter_text_file(path: Path) -> Iterator[str]:
    """Documents of a .txt/.txt.gz file: runs of non-blank lines separated by blank lines."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as raw:
        stream = io.TextIOWrapper(raw, encoding="utf-8", newline=None)
        paragraphs: list[str] = []
        lines = 0
        try:
            for line in stream:
                lines += 1
                line = line.strip()
                if line:
                    paragraphs.append(line)
                elif paragraphs:
                    yield "\n".join(paragraphs)
                    paragraphs = []
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not UTF-8 text (near line {lines + 1}; {err})") from err
        if paragraphs:
            yield "\n".join(paragraphs)


def iter_jsonl_file(path: Path, text_column: str) -> Iterator[str]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                text = json.loads(line).get(text_column)
                if text:
                    yield text


def iter_parquet_file(path: Path, text_column: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_column]):
        for text in batch.column(0).to_pylist():
            if text:
                yield text


def iter_local(patterns: list[str], text_column: str, key: str = "files") -> Iterator[str]:
    """Documents of every file matched by ``patterns``, file after file."""
    for path in expand_paths(patterns, key):
        ext = file_extension(path)
        if ext in (".txt", ".txt.gz"):
            yield from iter_text_file(path)
        elif ext in (".jsonl", ".jsonl.gz"):
            yield from iter_jsonl_file(path, text_column)
        else:
            yield from iter_parquet_file(path, text_column)


def load_hub_stream(hub: dict[str, Any]):
    """``datasets.load_dataset`` streaming; a local folder laid out like the hub repo takes ``name`` as data_dir."""
    import datasets

    path, name, split = str(hub["path"]), hub.get("name"), hub.get("split", "train")
    streaming = bool(hub.get("streaming", True))
    if Path(path).expanduser().is_dir():
        local = Path(path).expanduser()
        data_dir = name if name and (local / name).is_dir() else None
        return datasets.load_dataset(str(local), data_dir=data_dir, split=split, streaming=streaming)
    try:
        return datasets.load_dataset(path, name, split=split, streaming=streaming)
    except (ConnectionError, OSError) as err:  # offline, hub down, or no such dataset/config
        raise ValueError(
            f"cannot load the hub dataset data.hub.path={path!r} (name={name!r}, split={split!r}): {err}. "
            "Without network access, train on the sample corpus shipped with the package (data=sample) or on "
            "local files (data=local data.files='[PATH_OR_GLOB,...]'), "
            "point data.hub.path at a local folder laid out like the hub dataset, or prepare the corpus on "
            "a machine that is online (prepare_only=true) and reuse its data.cache_dir."
        ) from err


def iter_hub(hub: dict[str, Any], text_column: str) -> Iterator[str]:
    """Documents of the hub stream, capped at ``max_documents`` (counted from the head of the stream)."""
    rows = load_hub_stream(hub)
    texts = (row[text_column] for row in rows)
    cap = hub.get("max_documents")
    texts = islice(texts, cap) if cap else texts
    for text in texts:
        if text:
            yield text


def hub_token_rows(
    hub: dict[str, Any], column: str, seq_len: int, start: int = 0, stop: int | None = None, rows: int = 8192
) -> Iterator[np.ndarray]:
    """Rows ``start:stop`` of a pre-tokenized hub stream as (n, seq_len) int64 batches (``stop`` None: to the end).

    ``max_documents`` caps the rows read (counted from the head). Rows are read as Arrow batches, not
    one Python dict per row: a corpus of ~10^8 rows streams at disk or network speed.
    """
    cap = hub.get("max_documents")
    stop = min(stop, cap) if stop is not None and cap else (stop if stop is not None else cap)
    if stop is not None and stop <= start:
        return
    stream = load_hub_stream(hub).select_columns([column]).with_format("arrow")
    seen = 0
    for table in stream.iter(batch_size=rows):
        batch = _token_matrix(table.column(column), seq_len, column, seen)
        lo, hi = max(start - seen, 0), len(batch) if stop is None else min(stop - seen, len(batch))
        seen += len(batch)
        if hi > lo:
            yield batch[lo:hi]
        if stop is not None and seen >= stop:
            return


def _token_matrix(column, seq_len: int, name: str, first_row: int) -> np.ndarray:
    """An Arrow list column of equal-length id lists as an (n, seq_len) int64 array."""
    import pyarrow.compute as pc

    lists = column.combine_chunks()  # list, large_list or fixed_size_list of integers
    lengths = np.asarray(pc.list_value_length(lists).fill_null(0), np.int64)
    if len(lengths) and (lengths != seq_len).any():
        bad = int(np.flatnonzero(lengths != seq_len)[0])
        raise ValueError(
            f"pre-tokenized row {first_row + bad} has {lengths[bad]} ids in column {name!r}; every row must "
            f"hold exactly data.seq_len={seq_len} ids."
        )
    return np.asarray(lists.flatten(), np.int64).reshape(len(lengths), seq_len)


def split_streams(cfg: dict[str, Any]) -> tuple[Iterator[str], Iterator[str] | None]:
    """(train documents, validation documents or None) for the config's source.

    Hub: the first ``validation_split_documents`` documents are validation, the rest train; the two
    iterators open the stream separately, so either can be consumed first.
    """
    column = cfg["text_column"]
    if cfg["source"] == "local":
        valid = (
            iter_local(cfg["validation_files"], column, "validation_files")
            if cfg["validation_files"]
            else None
        )
        return iter_local(cfg["files"], column), valid
    held = int(cfg.get("validation_split_documents") or 0)
    train = islice(iter_hub(cfg["hub"], column), held, None)
    valid = islice(iter_hub(cfg["hub"], column), held) if held else None
    return train, valid


def train_documents(cfg: dict[str, Any]) -> Iterator[str]:
    return split_streams(cfg)[0]


def valid_documents(cfg: dict[str, Any]) -> Iterator[str] | None:
    return split_streams(cfg)[1]


def source_identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """What identifies the input text for cache keys: files with size and mtime, or the hub coordinates."""
    if cfg["source"] == "local":

        def describe(key: str) -> list[list[Any]]:
            paths = expand_paths(cfg[key], key) if cfg[key] else []
            return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]

        return {
            "source": "local",
            "files": describe("files"),
            "validation_files": describe("validation_files"),
        }
    hub = cfg["hub"]
    ident = {k: hub.get(k) for k in ("path", "name", "split", "max_documents")}
    path = Path(str(hub["path"])).expanduser()
    if path.is_dir():  # a local copy: its files' sizes and mtimes shape the corpus too
        files = sorted(p for p in path.rglob("*") if p.is_file())
        ident["files"] = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    ident["validation_split_documents"] = cfg.get("validation_split_documents")
    return {"source": "hub", **ident}
