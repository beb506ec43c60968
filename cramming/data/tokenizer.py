"""The BERT WordPiece tokenizer: normalisation as in the recipe, training on a bounded sample, a cache.

The trained tokenizer carries BERT's post-processor, so ``tok.encode(a, b)`` gives
``[CLS] a [SEP] b [SEP]`` for fine-tuning; packing calls ``encode_batch(..., add_special_tokens=False)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}


def build_normalizer(options: dict[str, Any]) -> normalizers.Normalizer:
    """BERT normalisation: clean control chars, lowercase, NFD + strip accents, then drop non-ASCII."""
    steps: list[normalizers.Normalizer] = [
        normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=not options.get("ascii_only", True),
            strip_accents=bool(options.get("strip_accents", True)),
            lowercase=bool(options.get("lowercase", True)),
        )
    ]
    if options.get("ascii_only", True):
        steps.append(normalizers.Replace(Regex(r"[^\x00-\x7F]+"), ""))
    return normalizers.Sequence(steps)


def untrained_tokenizer(options: dict[str, Any]) -> Tokenizer:
    """An empty WordPiece tokenizer with the normaliser and pre-tokeniser set (usable for normalising)."""
    tok = Tokenizer(models.WordPiece(unk_token=SPECIAL_TOKENS["unk"], max_input_chars_per_word=100))
    tok.normalizer = build_normalizer(options)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def train_tokenizer(
    documents: Iterable[str], vocab_size: int, options: dict[str, Any], show_progress: bool = False
) -> Tokenizer:
    """Train WordPiece on ``documents`` (the caller bounds the sample) and attach BERT's post-processor."""
    tok = untrained_tokenizer(options)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS.values()),
        show_progress=show_progress,
        continuing_subword_prefix="##",
    )
    tok.train_from_iterator(_batched(documents, 256), trainer=trainer)
    if tok.get_vocab_size() > vocab_size:
        raise ValueError(
            f"data.vocab_size={vocab_size} is smaller than the tokenizer's alphabet ({tok.get_vocab_size()} "
            "tokens incl. specials); give a larger vocab_size."
        )
    attach_post_processor(tok)
    return tok


def attach_post_processor(tok: Tokenizer) -> None:
    cls, sep = SPECIAL_TOKENS["cls"], SPECIAL_TOKENS["sep"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )


def special_ids(tok: Tokenizer) -> dict[str, int]:
    """pad/unk/cls/sep/mask -> id."""
    ids = {name: tok.token_to_id(token) for name, token in SPECIAL_TOKENS.items()}
    missing = [SPECIAL_TOKENS[k] for k, v in ids.items() if v is None]
    if missing:
        raise ValueError(
            f"tokenizer lacks special tokens {missing}; it must hold {list(SPECIAL_TOKENS.values())}."
        )
    return ids


def sample_documents(documents: Iterable[str], sample_mb: float) -> Iterator[str]:
    """The head of the stream up to ``sample_mb`` megabytes of text (the document crossing the bound included)."""
    budget = int(sample_mb * 1_000_000)
    seen = 0
    for doc in documents:
        yield doc
        seen += len(doc)
        if seen >= budget:
            return


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
