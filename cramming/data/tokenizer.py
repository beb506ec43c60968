"""The tokenizers: BERT WordPiece (normalisation as in the recipe) or RoBERTa's byte-level BPE.

Both are trained on a bounded sample and cached. The trained tokenizer carries the family's
post-processor, so ``tok.encode(a, b)`` gives ``[CLS] a [SEP] b [SEP]`` (WordPiece, token types 0/1)
or ``<s> a </s></s> b </s>`` (BPE, token types all 0) for fine-tuning; packing calls
``encode_batch(..., add_special_tokens=False)``. Code elsewhere uses the roles (``special_ids``:
pad/unk/cls/sep/mask), so ``<s>`` plays ``[CLS]`` and ``</s>`` plays ``[SEP]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
# RoBERTa's conventions: <s>=0, <pad>=1, </s>=2, <unk>=3, and <mask> the last id.
BPE_SPECIAL_TOKENS = {"pad": "<pad>", "unk": "<unk>", "cls": "<s>", "sep": "</s>", "mask": "<mask>"}
BPE_LEADING = ("<s>", "<pad>", "</s>", "<unk>")


# Characters kept as tokens when non-ASCII text is kept (tokenizers' BertWordPieceTokenizer default).
UNICODE_ALPHABET = 1000


def build_normalizer(options: dict[str, Any]) -> normalizers.Normalizer:
    """BERT normalisation: clean control chars, lowercase, NFD + strip accents; then, with ``ascii_only``
    (crammedBERT's choice), drop every non-ASCII character. Without it this is BERT's BasicTokenizer for
    uncased models: other scripts are kept and CJK characters are split into words of their own."""
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


def tokenizer_from_vocab(path: str, options: dict[str, Any]) -> Tokenizer:
    """A WordPiece tokenizer from a BERT ``vocab.txt`` (e.g. bert-base-uncased's), with our normalisation."""
    tok = untrained_tokenizer(options)
    tok.model = models.WordPiece.from_file(
        str(path), unk_token=SPECIAL_TOKENS["unk"], max_input_chars_per_word=100
    )
    present = [t for t in SPECIAL_TOKENS.values() if tok.token_to_id(t) is not None]
    tok.add_special_tokens(present)  # never split "[MASK]" and friends into pieces
    return tok


def train_tokenizer(
    documents: Iterable[str], vocab_size: int, options: dict[str, Any], show_progress: bool = False
) -> Tokenizer:
    """Train WordPiece (or BPE, ``options["kind"]``) on ``documents`` (the caller bounds the sample);
    the family's post-processor is attached."""
    if options.get("kind", "wordpiece") == "bpe":
        return train_bpe_tokenizer(documents, vocab_size, show_progress)
    tok = untrained_tokenizer(options)
    # Kept Unicode brings thousands of rare characters: the most frequent ones become tokens, the rest [UNK].
    alphabet = {} if options.get("ascii_only", True) else {"limit_alphabet": UNICODE_ALPHABET}
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS.values()),
        show_progress=show_progress,
        continuing_subword_prefix="##",
        **alphabet,
    )
    tok.train_from_iterator(_batched(documents, 256), trainer=trainer)
    if tok.get_vocab_size() > vocab_size:
        raise ValueError(
            f"data.vocab_size={vocab_size} is smaller than the tokenizer's alphabet ({tok.get_vocab_size()} "
            "tokens incl. specials); give a larger vocab_size."
        )
    attach_post_processor(tok)
    return tok


def train_bpe_tokenizer(documents: Iterable[str], vocab_size: int, show_progress: bool = False) -> Tokenizer:
    """RoBERTa's byte-level BPE: no normalisation (so any UTF-8 text round-trips), GPT-2 byte alphabet,
    ``<s> <pad> </s> <unk>`` first and ``<mask>`` appended last."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(BPE_LEADING) + 1:
        raise ValueError(
            f"data.vocab_size={vocab_size} is smaller than the byte-level alphabet ({len(alphabet)} bytes + 5 "
            "specials); give a larger vocab_size (RoBERTa: 50265)."
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,  # room for <mask>, appended after training so it is the last id
        min_frequency=2,
        special_tokens=list(BPE_LEADING),
        initial_alphabet=alphabet,
        show_progress=show_progress,
    )
    tok.train_from_iterator(_batched(documents, 256), trainer=trainer)
    tok.add_special_tokens([BPE_SPECIAL_TOKENS["mask"]])
    attach_post_processor(tok)
    return tok


def special_tokens_of(tok: Tokenizer) -> dict[str, str]:
    """The role -> token-string map of the tokenizer's family (WordPiece or byte-level BPE)."""
    if (
        tok.token_to_id(SPECIAL_TOKENS["cls"]) is None
        and tok.token_to_id(BPE_SPECIAL_TOKENS["cls"]) is not None
    ):
        return BPE_SPECIAL_TOKENS
    return SPECIAL_TOKENS


def is_bpe(tok: Tokenizer) -> bool:
    return special_tokens_of(tok) is BPE_SPECIAL_TOKENS


def attach_post_processor(tok: Tokenizer) -> None:
    if is_bpe(tok):  # RoBERTa: <s> A </s></s> B </s>, one token type
        cls, sep = BPE_SPECIAL_TOKENS["cls"], BPE_SPECIAL_TOKENS["sep"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}",
            pair=f"{cls} $A {sep} {sep} $B {sep}",
            special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
        )
        return
    cls, sep = SPECIAL_TOKENS["cls"], SPECIAL_TOKENS["sep"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )


def special_ids(tok: Tokenizer) -> dict[str, int]:
    """pad/unk/cls/sep/mask -> id (``[CLS]``-style for WordPiece, ``<s>``-style for byte-level BPE)."""
    names = special_tokens_of(tok)
    ids = {name: tok.token_to_id(token) for name, token in names.items()}
    missing = [names[k] for k, v in ids.items() if v is None]
    if missing:
        raise ValueError(
            f"tokenizer lacks special tokens {missing}; it must hold {list(SPECIAL_TOKENS.values())} "
            f"(WordPiece) or {list(BPE_SPECIAL_TOKENS.values())} (byte-level BPE)."
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
