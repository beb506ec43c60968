"""A pre-tokenized hub corpus (``data.readymade``, e.g. ``data=pile-readymade``): rows of token ids used as
they are, with the tokenizer that made them.

The reference publishes its final corpus (the Pile, built by its ``the-pile`` recipe) as a hub dataset of
rows with an ``input_ids`` column, each row one ``seq_len`` sequence, and ships the tokenizer in the same
dataset repo under ``tokenizer/`` (``tokenizer.json``, as the reference's loader downloads it). Rows are
streamed into the same shard cache as a corpus tokenized here (no tokenizing, filtering or packing: the
reference did that), so ordering, the loader and resuming work the same way.

The reference's tokenizer names its special tokens ``<pad> <unk> <cls> <sep> <mask>``; the rest of
cramming (fine-tuning, export) expects ``[PAD] [UNK] [CLS] [SEP] [MASK]``. ``adopt_special_tokens``
renames them in the tokenizer (same ids, so the pre-tokenized rows stay valid) and attaches BERT's
post-processor, so fine-tuning inputs are ``[CLS] a [SEP] b [SEP]`` as for any other corpus.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from cramming.data import cache, sources
from cramming.data.filters import FilterStats
from cramming.data.packing import storage_dtype
from cramming.data.tokenizer import SPECIAL_TOKENS, attach_post_processor, special_ids
from cramming.files import file_sha256, write_json


def tokenizer_file(cfg: dict[str, Any]) -> Path:
    """The tokenizer.json that made the rows: ``data.tokenizer.path`` if given, else
    ``<hub.path>/<readymade.tokenizer_file>`` in a local folder, else downloaded from the hub dataset repo."""
    if cfg["tokenizer"].get("path"):
        return Path(str(cfg["tokenizer"]["path"])).expanduser()
    inner, repo = cfg["readymade"]["tokenizer_file"], str(cfg["hub"]["path"])
    local = Path(repo).expanduser()
    if local.is_dir():
        path = local / inner
        if not path.is_file():
            raise ValueError(
                f"data.hub.path={repo!r} has no {inner!r} (data.readymade.tokenizer_file); a pre-tokenized "
                "corpus needs the tokenizer that made it: put it there or give data.tokenizer.path."
            )
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, inner, repo_type="dataset"))
    except Exception as err:  # offline, no such repo or file: several error types
        raise ValueError(
            f"cannot fetch {inner!r} (data.readymade.tokenizer_file) from the hub dataset "
            f"data.hub.path={repo!r}: {err}. Without network access, point data.hub.path at a local folder "
            "laid out like the hub dataset, or give data.tokenizer.path=PATH/tokenizer.json."
        ) from err


def tokenizer_key(cfg: dict[str, Any]) -> str:
    sha = file_sha256(tokenizer_file(cfg))[:16]
    return cache.config_key({"file": sha, "special_tokens": cfg["readymade"].get("special_tokens")})


def load_tokenizer(cfg: dict[str, Any], say: Callable[[str], None]) -> tuple[Tokenizer, str]:
    """The corpus' tokenizer with our special-token names; its vocabulary must have the fixed size."""
    path, ready = tokenizer_file(cfg), cfg["readymade"]
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(
            f"tokenizer file {str(path)!r} of data={ready.get('name')} is unreadable ({err})."
        ) from err
    tok = adopt_special_tokens(text, ready.get("special_tokens") or {})
    if tok.get_vocab_size() != ready["vocab_size"]:
        raise ValueError(
            f"tokenizer {str(path)!r} has {tok.get_vocab_size()} tokens; data={ready.get('name')} is "
            f"pre-tokenized with a vocabulary of exactly {ready['vocab_size']} (data.readymade.vocab_size)."
        )
    key = tokenizer_key(cfg)
    say(f"data: using the pre-tokenized corpus' tokenizer {path} ({tok.get_vocab_size()} tokens, key {key})")
    return tok, key


def adopt_special_tokens(tokenizer_json: str, names: dict[str, str]) -> Tokenizer:
    """The tokenizer with special token ``names[role]`` renamed to ours (``[CLS]``...), ids unchanged."""
    spec = json.loads(tokenizer_json)
    vocab = spec["model"].get("vocab")
    if not isinstance(vocab, dict):
        raise ValueError(
            "the pre-tokenized corpus' tokenizer has no token->id vocabulary (a WordPiece model)."
        )
    renames = {}
    for role, ours in SPECIAL_TOKENS.items():
        theirs = names.get(role, ours)
        if theirs not in vocab:
            raise ValueError(
                f"the tokenizer has no special token {theirs!r} for {role} (data.readymade.special_tokens.{role}); "
                f"its first tokens are {sorted(vocab, key=vocab.get)[:8]}."
            )
        if theirs != ours and ours in vocab:
            raise ValueError(f"cannot rename {theirs!r} to {ours!r}: the tokenizer already holds {ours!r}.")
        renames[theirs] = ours
    spec["model"]["vocab"] = {renames.get(t, t): i for t, i in vocab.items()}
    if spec["model"].get("unk_token") in renames:
        spec["model"]["unk_token"] = renames[spec["model"]["unk_token"]]
    for added in spec.get("added_tokens") or []:
        added["content"] = renames.get(added["content"], added["content"])
    spec["post_processor"] = None  # the reference's template names its own tokens; ours is attached below
    tok = Tokenizer.from_str(json.dumps(spec))
    for theirs, ours in renames.items():
        assert tok.token_to_id(ours) == vocab[theirs], (theirs, ours)  # same ids: the rows stay valid
    attach_post_processor(tok)
    special_ids(tok)
    return tok


# ----------------------------------------------------------------------------- rows into shards


def build_splits(
    cfg: dict[str, Any], entry: Path, say: Callable[[str], None], sep: int | None = None
) -> tuple[dict, dict]:
    """(manifest split records, stats) for train and, when rows are held out, valid.

    Validation is the first ``validation_split_documents`` rows; train starts at the first document
    boundary after them (``train_start``), so the document cut by the holdout is not trained on.
    """
    held = int(cfg.get("validation_split_documents") or 0)
    start = train_start(cfg, held, sep) if held else 0
    if start > held:
        say(
            f"data: train starts at row {start}: {start - held} rows hold the rest of the last held-out document"
        )
    splits, stats = {}, {}
    for name, first, stop in (("train", start, None), ("valid", 0, held)):
        if stop == 0:
            continue
        splits[name], stats[name] = build_split(name, first, stop, cfg, entry, say)
    if held:
        stats["train"]["boundary_rows_skipped"] = start - held
    return splits, stats


def train_start(cfg: dict[str, Any], held: int, sep: int | None) -> int:
    """The first row after the held-out rows that starts a document.

    Rows are cut from a stream of documents each closed by ``[SEP]``: the last held-out row usually ends
    inside a document whose rest fills the next rows. Those rows, up to the one holding its ``[SEP]``,
    are left out of train (the tokens after that ``[SEP]`` in the same row go with it: a row is never
    split). This separates the splits when rows are in stream order; in a corpus whose rows were
    re-sorted (the published Pile is in its curriculum order) the other parts of a document cut by a
    row boundary lie elsewhere, which no row position can separate.
    """
    if sep is None:
        raise ValueError(
            "a held-out split of a pre-tokenized corpus needs the [SEP] id to find a document end"
        )
    column, seq_len = cfg["readymade"]["column"], cfg["seq_len"]
    row = held - 1
    for batch in sources.hub_token_rows(cfg["hub"], column, seq_len, held - 1):
        if row == held - 1:  # the last held-out row: a document boundary when it ends with [SEP]
            if batch[0, -1] == sep:
                return held
            batch, row = batch[1:], held
        ends = np.flatnonzero((batch == sep).any(axis=1))
        if len(ends):
            return row + int(ends[0]) + 1
        row += len(batch)
    return max(row, held)  # no document end after the holdout: nothing left for train


def build_split(
    name: str, start: int, stop: int | None, cfg: dict[str, Any], entry: Path, say: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Copy rows ``start:stop`` of the stream into shards, saving the resume state after each shard."""
    progress = entry / "progress" / f"{name}.json"
    shards = _resumable_shards(entry, progress)
    if shards and shards.get("done"):
        return shards["record"], shards["stats"]
    done = shards["shards"] if shards else []
    rows_done = sum(s["sequences"] for s in done)
    if rows_done:
        say(f"data: resuming {name} from shard {len(done)} ({rows_done} rows done) in {entry}")
    seq_len, vocab = cfg["seq_len"], cfg["vocab_size"]
    writer = cache.ShardWriter(entry, name, seq_len, storage_dtype(vocab), cfg["shard_sequences"], done)
    began = time.perf_counter()
    rows = sources.hub_token_rows(cfg["hub"], cfg["readymade"]["column"], seq_len, start + rows_done, stop)
    try:
        for batch in rows:
            _check_ids(batch, vocab, rows_done)
            rows_done += _write(batch, writer, progress)
        writer.finish_shard()
    except BaseException:
        writer.abort()
        raise
    record = {"sequences": rows_done, "shards": writer.shards}
    filters = FilterStats(documents_read=rows_done, documents_kept=rows_done, tokens_kept=rows_done * seq_len)
    stats = {
        "docs": rows_done,
        "chars": 0,
        "tokens": rows_done * seq_len,
        "seconds": time.perf_counter() - began,
        "sequences": rows_done,
        "filters": filters.to_dict(),
    }
    write_json(progress, {"done": True, "record": record, "stats": stats})
    return record, stats


def _write(batch: np.ndarray, writer: cache.ShardWriter, progress: Path) -> int:
    """Write rows, closing a shard (and saving the resume state) each time one fills up."""
    i = 0
    while i < len(batch):
        take = min(len(batch) - i, writer.room())
        writer.write(batch[i : i + take])
        i += take
        if writer.room() == 0:
            writer.finish_shard()
            write_json(progress, {"shards": writer.shards})
    return len(batch)


def _check_ids(batch: np.ndarray, vocab_size: int, first_row: int) -> None:
    if batch.size and (batch.min() < 0 or batch.max() >= vocab_size):
        row = int(np.flatnonzero((batch < 0).any(axis=1) | (batch >= vocab_size).any(axis=1))[0])
        raise ValueError(
            f"pre-tokenized row {first_row + row} holds ids outside [0, {vocab_size}) (data.vocab_size)."
        )


def _resumable_shards(entry: Path, progress: Path) -> dict[str, Any] | None:
    """The saved state of a split if its shard files check out, else None (start the split over)."""
    if not progress.is_file():
        return None
    try:
        state = json.loads(progress.read_text())
        shards = state["record"]["shards"] if state.get("done") else state["shards"]
        problem = cache.verify_files(entry, shards, full=True)
    except (OSError, ValueError, KeyError) as err:
        problem = f"unreadable ({err})"
    if problem:
        progress.unlink(missing_ok=True)
        return None
    return state
