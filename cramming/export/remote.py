"""Export a cramming model folder for Hugging Face ``transformers`` users.

    python -m cramming.export model=outputs/RUN/model out=outputs/RUN/hf

The folder holds config.json (with ``auto_map``), model.safetensors, tokenizer.json,
tokenizer_config.json, special_tokens_map.json and two self-contained remote-code files
(configuration_cramming.py, modeling_cramming.py) that import nothing from ``cramming``:

    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(out)

``AutoModel`` (the encoder), ``AutoModelForMaskedLM`` and ``AutoModelForSequenceClassification``
all load either kind of export; a head the export lacks starts from random weights. A recipe=bert /
roberta model whose arch transformers' own classes cannot compute (e.g. ``arch.norm_position=pre``) goes
this way too, with its decoder bias, pooler and NSP head (``AutoModelForPreTraining`` gives both logits).
Before writing, every tensor of the model is checked against the remote-code class: an export that would
leave one behind (or start one from random weights) is refused with the names (``check_carried``).

Every config.json carries ``cramming_pretraining``: how pretraining framed the inputs (sequence length,
[CLS] per sequence or not, objective, masking rate and scheme, normaliser), or ``recorded: false`` for an
export from before the key existed.

A ``recipe=bert`` model is written as transformers' own ``BertForPreTraining`` (``BertForMaskedLM``,
``AutoModel`` load it too) and a ``recipe=roberta`` model as ``RobertaForMaskedLM``: no remote code,
no ``trust_remote_code`` (``cramming.export.native``).
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from cramming.commands import say_error
from cramming.data.tokenizer import is_bpe, special_ids, special_tokens_of
from cramming.export.folder import (
    CONFIG,
    FRAMING,
    TOKENIZER,
    WEIGHTS,
    load_model,
    read_config,
    read_tokenizer,
)
from cramming.export.native import export_native, native_family
from cramming.export.shared import framing_of, write_json_files
from cramming.files import atomic_write

log = logging.getLogger(__name__)

REMOTE_CODE = ("configuration_cramming.py", "modeling_cramming.py")
AUTO_MAP = {
    "AutoConfig": "configuration_cramming.CrammingConfig",
    "AutoModel": "modeling_cramming.CrammingModel",
    "AutoModelForMaskedLM": "modeling_cramming.CrammingForMaskedLM",
    "AutoModelForSequenceClassification": "modeling_cramming.CrammingForSequenceClassification",
    "AutoModelForPreTraining": "modeling_cramming.CrammingForPreTraining",
}
ARCHITECTURES = {  # task -> the remote-code class config.json names (and check_carried builds)
    "mlm": "CrammingForMaskedLM",
    "pretraining": "CrammingForPreTraining",
    "classification": "CrammingForSequenceClassification",
}


def hf_config(config: Mapping, tokenizer: Tokenizer) -> dict:
    """The transformers config.json for a cramming config.json (special ids from ``tokenizer``)."""
    arch = dict(config["arch"])
    ids = special_ids(tokenizer)
    task = config.get("task", "mlm")
    out = {
        "model_type": "cramming-bert",
        "auto_map": dict(AUTO_MAP),
        "arch": arch,
        "vocab_size": config["vocab_size"],
        "pad_token_id": ids["pad"],
        "bos_token_id": ids["cls"],
        "eos_token_id": ids["sep"],
        "decoder_bias": task == "pretraining",  # BertForPreTraining's decoder has its own bias
        "nsp": bool(config.get("nsp")),
        "tie_word_embeddings": bool(arch.get("tie_embeddings", True)),
        "dtype": "float32",
        "cramming_version": config.get("cramming_version"),
        "cramming_recipe": (config.get("pretraining") or {}).get("recipe"),
        FRAMING: framing_of(config, tokenizer),
    }
    if config.get("task") == "classification":
        out["architectures"] = ["CrammingForSequenceClassification"]
        num_labels = int(config["num_labels"])
        if num_labels == 1:
            out["problem_type"] = "regression"
            names = [config.get("label_column") or "score"]
        else:
            out["problem_type"] = "single_label_classification"
            names = [str(n) for n in config.get("labels") or [f"LABEL_{i}" for i in range(num_labels)]]
        out["id2label"] = {str(i): name for i, name in enumerate(names)}
        out["label2id"] = {name: i for i, name in enumerate(names)}
        for key in ("text_column", "text_pair_column", "label_column", "max_length"):
            if config.get(key) is not None:
                out[key] = config[key]
    else:
        out["architectures"] = [ARCHITECTURES[task]]
        # AutoModelForSequenceClassification on a pretrained export: a fresh head of the reference's shape, or
        # BERT's pooler head for a recipe=bert/roberta model (its trained pooler then loads into it); a
        # classifier export keeps the head it was trained with (an old one without the key, the old head)
        out["arch"].setdefault("classifier_head", "bert" if task == "pretraining" else "crammed")
    return out


def tokenizer_files(tokenizer: Tokenizer, model_max_length: int) -> tuple[dict, dict]:
    """tokenizer_config.json and special_tokens_map.json for ``PreTrainedTokenizerFast``: the special
    tokens of the tokenizer's family ([PAD]... for WordPiece, <pad>... plus bos/eos for byte-level BPE),
    so ``tokenizer(..., padding=True)`` pads with the id the model was built for."""
    tokens = special_tokens_of(tokenizer)
    special = {f"{role}_token": tokens[role] for role in ("unk", "sep", "pad", "cls", "mask")}
    if is_bpe(tokenizer):
        special.update(bos_token=tokens["cls"], eos_token=tokens["sep"])
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "padding_side": "right",
        "truncation_side": "right",
        "clean_up_tokenization_spaces": False,
        **special,
    }
    return config, special


def state_dict_for_hf(model) -> dict:
    """Contiguous tensors, the tied decoder dropped (transformers re-ties it from the embeddings)."""
    state = model.state_dict()
    if model.arch.get("tie_embeddings") and "decoder.weight" in state:
        del state["decoder.weight"]
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def check_carried(state: Mapping[str, torch.Tensor], config: Mapping) -> None:
    """Refuse an export the remote-code class cannot hold exactly: a ValueError names every tensor it
    would drop, leave at random initialisation, or load with another shape."""
    from cramming.export.hf import modeling_cramming
    from cramming.export.hf.configuration_cramming import CrammingConfig

    fields = {k: v for k, v in config.items() if k not in ("auto_map", "architectures", "model_type")}
    cls = getattr(modeling_cramming, config["architectures"][0])
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation cost
        theirs = {k: tuple(v.shape) for k, v in cls(CrammingConfig(**fields)).state_dict().items()}
    if config.get("tie_word_embeddings") and "decoder.weight" not in state:
        theirs.pop("decoder.weight", None)  # re-tied to the word embeddings on load
    ours = {k: tuple(v.shape) for k, v in state.items()}
    dropped = sorted(set(ours) - set(theirs))
    random = sorted(set(theirs) - set(ours))
    reshaped = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
    problems = [
        f"{what}: {', '.join(keys)}"
        for what, keys in (
            ("weights the remote-code model has no place for", dropped),
            ("weights it would start from random values", random),
            ("weights of another shape", reshaped),
        )
        if keys
    ]
    if problems:
        raise ValueError(
            f"cannot export this {config['architectures'][0]} for transformers without changing it: "
            + "; ".join(problems)
        )


def export_hf(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a transformers-loadable folder for the cramming export at ``model_dir``; returns ``out_dir``."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.resolve() == model_dir.resolve():
        raise ValueError(f"out={out_dir} is the model folder itself; choose another folder")
    config = read_config(model_dir)
    model = load_model(model_dir)
    tokenizer = read_tokenizer(model_dir)
    family = native_family(config, is_bpe(tokenizer), special_ids(tokenizer)["pad"])
    if family is not None:  # recipe=bert / roberta: transformers' own classes, no remote code
        export_native(model, config, tokenizer, out_dir, family)
        log.info("wrote a transformers %s folder to %s (no remote code needed)", family, out_dir)
        return out_dir
    state = state_dict_for_hf(model)
    hf = hf_config(config, tokenizer)
    check_carried(state, hf)  # before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / WEIGHTS, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    shutil.copyfile(model_dir / TOKENIZER, out_dir / TOKENIZER)
    max_len = int(config.get("max_length") or config["arch"]["max_position_embeddings"])
    tok_config, special = tokenizer_files(tokenizer, max_len)
    files = {
        CONFIG: hf,
        "tokenizer_config.json": tok_config,
        "special_tokens_map.json": special,
    }
    write_json_files(out_dir, files)
    for name in REMOTE_CODE:
        shutil.copyfile(Path(__file__).parent / "hf" / name, out_dir / name)
    log.info("wrote a transformers folder to %s (load with trust_remote_code=True)", out_dir)
    return out_dir


def parse_overrides(argv: Sequence[str], allowed: Sequence[str]) -> dict[str, str]:
    """``key=value`` arguments; a ValueError names an unknown key or a malformed argument."""
    values = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in allowed:
            raise ValueError(f"unexpected argument {arg!r}; expected {' '.join(k + '=...' for k in allowed)}")
        values[key] = value
    return values


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args = parse_overrides(sys.argv[1:] if argv is None else argv, ("model", "out"))
        if "model" not in args:
            raise ValueError("missing model=PATH (an exported cramming model folder, e.g. outputs/RUN/model)")
        out = args.get("out") or str(Path(args["model"]).parent / (Path(args["model"]).name + "-hf"))
        export_hf(args["model"], out)
    except ValueError as err:
        say_error(err, "cramming.export")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
