"""The data group's values, checked without opening a file: what ``DataConfig`` runs once.

The files the group names are checked by the data pipeline (``cramming.data.config.check_files``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SOURCES = ("local", "hub")
ORDERINGS = ("none", "sentence-length", "reverse-unigram")
RENAMED_ORDERINGS = {"quality": "reverse-unigram"}  # old value -> its name now
VERIFY_MODES = ("sizes", "full")
OBJECTIVES = ("mlm", "nsp")
MASKINGS = ("crammed", "bert")
PACKINGS = ("stream", "full-sentences")  # packing.py: the cut document stream | RoBERTa's FULL-SENTENCES
TOKENIZER_KINDS = ("wordpiece", "bpe")
MIN_PAIR_SEQ_LEN = 16  # [CLS] A [SEP] B [SEP] with a few tokens in each segment
MIN_VOCAB, MAX_VOCAB = 256, 4_294_967_295
MIN_SEQ_LEN, MAX_SEQ_LEN = 8, 65_536


def check_values(cfg: dict[str, Any]) -> None:
    """The data group's values (no file is opened): ``DataConfig`` runs this once."""
    if cfg["source"] not in SOURCES:
        raise ValueError(f"data.source={cfg['source']!r} is not known; accepted sources are {SOURCES}.")
    _check_int("vocab_size", cfg["vocab_size"], MIN_VOCAB, MAX_VOCAB)
    _check_int("seq_len", cfg["seq_len"], MIN_SEQ_LEN, MAX_SEQ_LEN)
    _check_int("shard_sequences", cfg["shard_sequences"], 1, 1 << 40)
    _check_int("batch_documents", cfg["batch_documents"], 1, 1 << 24)
    _check_int("num_workers", cfg["num_workers"], 0, 4096)
    _check_options(cfg)
    if cfg["source"] == "local":
        if not cfg["files"]:
            raise ValueError(
                "data.files is empty; with data.source=local give paths or globs of corpus files."
            )
    else:
        _check_hub(cfg)
    if cfg["readymade"] is not None:
        _check_readymade(cfg)


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"data.{name}={value!r} is not valid; it must be an integer in [{low}, {high}].")


def _check_options(cfg: dict[str, Any]) -> None:
    ordering = cfg["ordering"]
    if ordering in RENAMED_ORDERINGS:
        raise ValueError(
            f"data.ordering={ordering!r} was renamed: it is the reference's reverse-unigram curriculum "
            f"(common-token sequences first); use data.ordering={RENAMED_ORDERINGS[ordering]}. "
            f"Accepted values are {ORDERINGS}."
        )
    if ordering not in ORDERINGS:
        raise ValueError(f"data.ordering={ordering!r} is not known; accepted values are {ORDERINGS}.")
    if not isinstance(cfg["cls_per_sequence"], bool):
        raise ValueError(
            f"data.cls_per_sequence={cfg['cls_per_sequence']!r} is not valid; give true ([CLS] opens every "
            "sequence) or false (the reference's: sequences are plain cuts of the document stream)."
        )
    if cfg["verify"] not in VERIFY_MODES:
        raise ValueError(f"data.verify={cfg['verify']!r} is not known; accepted values are {VERIFY_MODES}.")
    p = cfg["mlm_probability"]
    if not isinstance(p, (int, float)) or not 0.0 < p < 1.0:
        raise ValueError(f"data.mlm_probability={p!r} is not valid; it must be a number in (0, 1).")
    _check_recipe_options(cfg)
    sample_mb = cfg["tokenizer"].get("sample_mb")
    if not isinstance(sample_mb, (int, float)) or sample_mb <= 0:
        raise ValueError(
            f"data.tokenizer.sample_mb={sample_mb!r} is not valid; it must be a positive number."
        )
    tok_path = cfg["tokenizer"].get("path")
    if tok_path and not Path(str(tok_path)).expanduser().is_file():
        raise ValueError(
            f"data.tokenizer.path={tok_path!r} is not a file; give a tokenizer.json or null (train one)."
        )
    ratio = cfg["filters"].get("max_tokens_per_char")
    if ratio is not None and (not isinstance(ratio, (int, float)) or ratio <= 0):
        raise ValueError(
            f"data.filters.max_tokens_per_char={ratio!r} is not valid; give a positive number or null (off)."
        )
    min_chars = cfg["filters"].get("min_doc_chars")
    if min_chars is not None and (not isinstance(min_chars, int) or min_chars < 0):
        raise ValueError(
            f"data.filters.min_doc_chars={min_chars!r} is not valid; give an integer ≥ 0 or null (off)."
        )


def _check_recipe_options(cfg: dict[str, Any]) -> None:
    """The objective, masking and tokenizer kind of the BERT-family recipes, and their conflicts."""
    for key, accepted in (("objective", OBJECTIVES), ("masking", MASKINGS)):
        if cfg[key] not in accepted:
            raise ValueError(f"data.{key}={cfg[key]!r} is not known; accepted values are {accepted}.")
    kind = cfg["tokenizer"].get("kind", "wordpiece")
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"data.tokenizer.kind={kind!r} is not known; accepted values are {TOKENIZER_KINDS}.")
    _check_packing(cfg)
    if cfg["objective"] != "nsp":
        return
    if cfg["ordering"] != "none":
        raise ValueError(
            f"data.ordering={cfg['ordering']!r} is not supported with data.objective=nsp (sentence pairs are "
            "shuffled); use data.ordering=none."
        )
    if kind == "bpe":
        raise ValueError(
            "data.tokenizer.kind=bpe conflicts with data.objective=nsp (recipe=bert): BERT's sentence pairs "
            "use the WordPiece [CLS]/[SEP] vocabulary; use data.tokenizer.kind=wordpiece, or recipe=roberta for BPE."
        )
    if isinstance(cfg["seq_len"], int) and cfg["seq_len"] < MIN_PAIR_SEQ_LEN:
        raise ValueError(
            f"data.seq_len={cfg['seq_len']} is too short for a sentence pair ([CLS] A [SEP] B [SEP]) with "
            f"data.objective=nsp (recipe=bert); give data.seq_len >= {MIN_PAIR_SEQ_LEN} (BERT used 128)."
        )
    p = cfg["short_seq_prob"]
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"data.short_seq_prob={p!r} is not valid; it must be a number in [0, 1].")


def _check_packing(cfg: dict[str, Any]) -> None:
    """``data.packing``; full-sentence blocks open with <s> themselves and hold whole sentences of text."""
    packing = cfg.get("packing", "stream")
    if packing not in PACKINGS:
        raise ValueError(f"data.packing={packing!r} is not known; accepted values are {PACKINGS}.")
    if packing == "stream":
        return
    for bad, why in (
        (cfg["objective"] == "nsp", "data.objective=nsp builds its own sentence pairs"),
        (cfg["cls_per_sequence"], "data.cls_per_sequence=true frames the cut stream; blocks open with <s>"),
        (cfg["readymade"] is not None, "a pre-tokenized corpus is packed already"),
    ):
        if bad:
            raise ValueError(f"data.packing={packing} cannot be used here: {why}; use data.packing=stream.")


def _check_hub(cfg: dict[str, Any]) -> None:
    hub = cfg["hub"]
    if not hub.get("path"):
        raise ValueError(
            "data.hub.path is empty; give a hub dataset id (e.g. wikimedia/wikipedia) or a folder."
        )
    cap = hub.get("max_documents")
    if cap is not None and (not isinstance(cap, int) or cap < 1):
        raise ValueError(f"data.hub.max_documents={cap!r} is not valid; give a positive integer or null.")
    held = cfg["validation_split_documents"]
    if not isinstance(held, int) or held < 0:
        raise ValueError(f"data.validation_split_documents={held!r} is not valid; give an integer ≥ 0.")


def _check_readymade(cfg: dict[str, Any]) -> None:
    """A pre-tokenized corpus fixes the vocabulary, the sequence length and the layout."""
    ready = cfg["readymade"]
    name = ready.get("name", "readymade")
    if cfg["source"] != "hub":
        raise ValueError(
            f"data.source={cfg['source']!r} cannot serve the pre-tokenized corpus data={name}; it needs "
            "data.source=hub (a hub dataset id or a local folder laid out like it in data.hub.path)."
        )
    for key in ("vocab_size", "seq_len"):
        if cfg[key] != ready[key]:
            raise ValueError(
                f"data.{key}={cfg[key]!r} cannot be used with data={name}: its sequences are pre-tokenized "
                f"with {key} fixed at {ready[key]}; leave data.{key} at {ready[key]} or use data=pile "
                "(raw text, tokenized here) to change it."
            )
    if cfg["cls_per_sequence"]:
        raise ValueError(
            f"data.cls_per_sequence=true cannot be used with data={name}: its sequences are fixed as the "
            "reference built them, without [CLS]; leave data.cls_per_sequence at false."
        )
    for key in ("column", "tokenizer_file"):
        if not ready.get(key):
            raise ValueError(f"data.readymade.{key}={ready.get(key)!r} is empty; give a non-empty string.")
