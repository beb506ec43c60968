"""Builders shared by the fine-tuning, prediction and HF-export tests: a tiny pretrained export."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

from cramming.conf import read_yaml
from cramming.export.folder import save_export
from cramming.models import BertForMLM

REPO_ROOT = Path(__file__).resolve().parents[1]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_arch() -> dict:
    return read_yaml("arch", "tiny.yaml")


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


def build_tiny_classifier(mlm_dir: Path, out_dir: Path, labels: list[str], seed: int = 1) -> Path:
    """A classifier on the tiny export's encoder with a random head, saved like a fine-tuned export."""
    from cramming.export.folder import load_model, load_tokenizer, read_config
    from cramming.models import build_classifier

    config = read_config(mlm_dir)
    torch.manual_seed(seed)
    encoder = load_model(mlm_dir).encoder.state_dict()
    model = build_classifier(config["arch"], config["vocab_size"], len(labels), encoder)
    extra = {
        "labels": labels,
        "id2label": {str(i): n for i, n in enumerate(labels)},
        "label2id": {n: i for i, n in enumerate(labels)},
        "text_column": "text",
        "max_length": 64,
    }
    return save_export(model.eval(), load_tokenizer(mlm_dir), out_dir, extra=extra)


def finetune_cfg(**overrides) -> dict:
    """conf/finetune.yaml as a plain dict, on CPU with the PyTorch ops, plus ``overrides``."""
    cfg = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "finetune.yaml"))
    cfg.pop("defaults")
    cfg.pop("hydra")
    cfg.update(impl={"kernels": "torch", "device": "cpu", "threads": 2, "precision": "fp32"}, log_every=0)
    cfg.update(overrides)
    return cfg


# Overrides that keep CLI runs in tests on the CPU reference ops (conftest sets TRITON_INTERPRET=1).
CLI_IMPL = ["impl.kernels=torch", "impl.device=cpu", "impl.threads=2"]


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter moved off its initial value (zeros and ones included), deterministically."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()
