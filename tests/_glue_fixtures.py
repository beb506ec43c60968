"""Helpers shared by the GLUE and leaderboard tests: a tiny model export built in seconds."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers.processors import TemplateProcessing

from cramming.conf import read_yaml
from cramming.export.folder import save_export
from cramming.models import build_mlm

REPO_ROOT = Path(__file__).resolve().parents[1]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_arch() -> dict:
    return read_yaml("arch", "tiny.yaml")


def train_tokenizer(corpus: Path, lines: int = 2000, vocab_size: int = 2000, post_processor: bool = True):
    """A lowercase BERT-style WordPiece tokenizer trained on the first ``lines`` lines of ``corpus``."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
    with open(corpus, encoding="utf-8") as f:
        tok.train_from_iterator(list(islice(f, lines)), trainer)
    if post_processor:
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
    return tok


def make_tiny_export(out_dir: Path, corpus: Path, seed: int = 0, extra: dict | None = None) -> Path:
    """A random-init tiny BertForMLM export (no pretraining) with a WordPiece tokenizer."""
    tok = train_tokenizer(corpus)
    torch.manual_seed(seed)
    model = build_mlm(tiny_arch(), tok.get_vocab_size())
    return save_export(model, tok, out_dir, extra=extra)
