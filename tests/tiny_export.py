"""Builders shared by the fine-tuning, prediction and HF-export tests: a tiny pretrained export."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

from cramming.export import save_export
from cramming.model import BertForMLM

REPO_ROOT = Path(__file__).resolve().parents[1]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_arch() -> dict:
    return OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "arch" / "tiny.yaml"))


def train_tokenizer(corpus: Path, lines: int = 3000, vocab_size: int = 2000) -> Tokenizer:
    """A small lowercase WordPiece tokenizer with BERT's special tokens and [CLS] a [SEP] b [SEP]."""
    with open(corpus, encoding="utf-8") as f:
        texts = [line for _, line in zip(range(lines), f) if line.strip()]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tok


def build_tiny_export(corpus: Path, out_dir: Path, seed: int = 0) -> Path:
    """A randomly initialised tiny BertForMLM plus tokenizer, saved as an export folder."""
    tok = train_tokenizer(corpus)
    torch.manual_seed(seed)
    model = BertForMLM(tiny_arch(), tok.get_vocab_size())
    return save_export(model, tok, out_dir)


def read_glue_tsv(path: Path, limit: int | None = None) -> list[dict]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[:limit] if limit else rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
