"""cramming model folders: ``model.safetensors`` + ``config.json`` + ``tokenizer.json``.

The same layout serves the pretrained MLM and fine-tuned classifiers. Files are
written atomically, and loading checks every key strictly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model
from tokenizers import Tokenizer

from cramming.files import atomic_write
from cramming.models import LEGACY_HEAD, BertForMLM, BertForPreTraining, BertForSequenceClassification
from cramming.version import __version__

WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.json"
FRAMING = "cramming_pretraining"  # config.json key: how pretraining framed the model's inputs
MASKING_SCHEMES = {  # data.masking -> what it did, for evaluation code that rebuilds the training layout
    "crammed": "a fixed count of round(mlm_probability * seq_len) positions per sequence, 80/10/10",
    "bert": "each token independently with probability mlm_probability, 80/10/10",
}


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Strip torch.compile and DDP wrappers, so keys carry no `_orig_mod.` or `module.` prefix."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def model_config(model: torch.nn.Module, extra: Mapping | None = None) -> dict:
    model = _unwrap(model)
    config = {
        "model_type": "cramming-bert",
        "cramming_version": __version__,
        "arch": dict(model.arch),
        "vocab_size": model.vocab_size,
    }
    if isinstance(model, BertForSequenceClassification):
        config.update(task="classification", num_labels=model.num_labels)
    elif isinstance(model, BertForPreTraining):  # recipe=bert / roberta: decoder bias, optional NSP head
        config.update(task="pretraining", nsp=model.nsp)
    else:
        config.update(task="mlm")
    config.update(extra or {})
    return config


def pretraining_framing(cfg: Mapping, tokenizer: Tokenizer) -> dict:
    """How pretraining framed its inputs (``config.json``'s ``cramming_pretraining``), from the run config.

    Enough for evaluation code to rebuild the training layout: sequence length, whether each sequence
    opened with [CLS] / <s>, the objective, the masking rate and scheme, and the text normalisation.
    """
    data = cfg["data"]
    masking = str(data.get("masking", "crammed"))
    tok = dict(data.get("tokenizer") or {})
    bpe = tok.get("kind") == "bpe"
    normalizer = json.loads(tokenizer.to_str()).get("normalizer")
    return {
        "recipe": cfg.get("recipe", "crammed"),
        "objective": str(data.get("objective", "mlm")),
        "seq_len": int(data["seq_len"]),
        "cls_per_sequence": bool(data.get("cls_per_sequence", False)),
        "mlm_probability": float(data["mlm_probability"]),
        "masking": masking,
        "masking_scheme": MASKING_SCHEMES.get(masking, masking),
        "tokenizer_kind": str(tok.get("kind", "wordpiece")),
        # lowercase / strip_accents / ascii_only (WordPiece only: byte-level BPE normalises nothing)
        "normalization": {}
        if bpe
        else {k: tok[k] for k in ("lowercase", "strip_accents", "ascii_only") if k in tok},
        "normalizer": normalizer,  # the tokenizer's own normalizer (tokenizers JSON), null for byte-level BPE
    }


def save_export(
    model: torch.nn.Module, tokenizer: Tokenizer, out_dir: str | Path, extra: Mapping | None = None
) -> Path:
    """Write the model folder. ``extra`` goes into config.json (labels, training summary, ...)."""
    out_dir = Path(out_dir)
    model = _unwrap(model)
    config = model_config(model, extra)
    # save_model (not save_file) handles the tied decoder/embedding weights.
    atomic_write(out_dir / WEIGHTS, lambda tmp: st_save_model(model, str(tmp)))
    atomic_write(out_dir / TOKENIZER, lambda tmp: tokenizer.save(str(tmp)))
    atomic_write(out_dir / CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    return out_dir


def read_config(path: str | Path) -> dict:
    path = Path(path)
    config_file = path / CONFIG
    missing = [name for name in (CONFIG, WEIGHTS, TOKENIZER) if not (path / name).is_file()]
    if missing:
        raise ValueError(
            f"{path} is not an exported cramming model: missing {', '.join(missing)} "
            f"(an export folder holds {CONFIG}, {WEIGHTS} and {TOKENIZER}, e.g. outputs/RUN/model)"
        )
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_file} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(
            f"{config_file} holds a JSON {type(config).__name__}, not an object with the model config"
        )
    if config.get("model_type") != "cramming-bert":
        raise ValueError(
            f"{config_file} is not a cramming model config (model_type={config.get('model_type')!r})"
        )
    check_config_keys(config, config_file)
    return config


def check_config_keys(config: Mapping, config_file: Path) -> None:
    """The keys ``build_from_config`` needs, with the right types; a ValueError names the first bad one."""
    required = {"arch": dict, "vocab_size": int}
    if config.get("task") == "classification":
        required["num_labels"] = int
    for key, kind in required.items():
        if key not in config:
            raise ValueError(f"{config_file} is missing the key {key!r} (a corrupt or incomplete export)")
        value = config[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(
                f"{config_file}: {key}={value!r} must be a JSON {'object' if kind is dict else 'integer'}"
            )


def build_from_config(config: Mapping) -> torch.nn.Module:
    if config.get("task") == "classification":
        arch = config["arch"]  # exports from before named heads have the old one
        head = arch.get("classifier_head", LEGACY_HEAD)
        return BertForSequenceClassification(arch, config["vocab_size"], config["num_labels"], head=head)
    if config.get("task") == "pretraining":
        return BertForPreTraining(config["arch"], config["vocab_size"], nsp=bool(config.get("nsp")))
    return BertForMLM(config["arch"], config["vocab_size"])


def load_model(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model from config.json and load its weights with strict key checking; eval mode."""
    path = Path(path)
    config = read_config(path)
    model = build_from_config(config)
    try:
        st_load_model(model, path / WEIGHTS, strict=True, device=str(device))
    except Exception as err:  # safetensors raises RuntimeError/SafetensorError for bad files and keys
        raise ValueError(f"cannot load weights from {path / WEIGHTS}: {err}") from err
    model.config = config
    return model.to(device).eval()


def read_tokenizer(path: str | Path) -> Tokenizer:
    """``path/tokenizer.json`` as a Tokenizer; a ValueError (not the library's bare Exception) when unreadable."""
    tokenizer_file = Path(path) / TOKENIZER
    try:
        return Tokenizer.from_file(str(tokenizer_file))
    except Exception as err:  # tokenizers raises a plain Exception for bad JSON or an unknown model
        raise ValueError(f"{tokenizer_file} is not a readable tokenizer: {err}") from err


def load_tokenizer(path: str | Path) -> Tokenizer:
    read_config(path)
    return read_tokenizer(path)
