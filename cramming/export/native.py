"""Native transformers folders for recipe=bert and recipe=roberta models (no remote code).

A ``BertForPreTraining`` (cramming.models.pretraining) of the post-LN BERT shape maps one to one onto
transformers' ``BertForPreTraining`` (WordPiece tokenizer; NSP head included when trained) or
``RobertaForMaskedLM`` (byte-level BPE tokenizer). The differences handled here: our fused QKV matrix
is split into query/key/value, and RoBERTa's positions start at ``padding_idx + 1 = 2``, so our
position table is written from row 2 on (rows 0 and 1 are never used for real tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from cramming.data.tokenizer import special_ids, special_tokens_of
from cramming.export.folder import FRAMING
from cramming.export.shared import framing_of, write_json_files
from cramming.files import atomic_write

# What transformers' BERT/RoBERTa layers compute; any other arch goes through the remote-code export.
NATIVE_ARCH = {
    "ffn": "gelu",
    "activation": "gelu",
    "norm_position": "post",
    "position_embedding": "learned",
    "linear_bias": True,
    "norm_bias": True,
    "embedding_norm": True,
    "final_norm": False,
    "prediction_head": True,
    "tie_embeddings": True,
}
ROBERTA_POSITION_OFFSET = 2  # padding_idx (1) + 1


def native_family(config: Mapping, bpe: bool, pad_id: int | None = None) -> str | None:
    """``"bert"`` / ``"roberta"`` when the export maps onto transformers' classes with every weight, else
    None (the remote-code export then carries it). ``RobertaForMaskedLM`` has no NSP head, and computes
    positions from ``padding_idx``, which must be the pad id 1 our position offset assumes."""
    if config.get("task") != "pretraining":
        return None
    arch = config["arch"]
    if any(arch.get(key) != value for key, value in NATIVE_ARCH.items()):
        return None
    if bpe and (config.get("nsp") or (pad_id is not None and pad_id != ROBERTA_POSITION_OFFSET - 1)):
        return None
    return "roberta" if bpe else "bert"


def hf_config(config: Mapping, family: str, special: Mapping[str, int]) -> dict:
    arch = config["arch"]
    out = {
        "vocab_size": config["vocab_size"],
        "hidden_size": arch["hidden_size"],
        "num_hidden_layers": arch["num_layers"],
        "num_attention_heads": arch["num_heads"],
        "intermediate_size": arch["intermediate_size"],
        "hidden_act": "gelu",
        "hidden_dropout_prob": arch["dropout"],
        "attention_probs_dropout_prob": arch["attention_dropout"],
        "initializer_range": arch["init_std"],
        "layer_norm_eps": arch["norm_eps"],
        "position_embedding_type": "absolute",
        "pad_token_id": special["pad"],
        "tie_word_embeddings": True,
        "dtype": "float32",
        "cramming_recipe": (config.get("pretraining") or {}).get("recipe"),
    }
    if family == "roberta":
        out.update(
            model_type="roberta",
            architectures=["RobertaForMaskedLM"],
            max_position_embeddings=arch["max_position_embeddings"] + ROBERTA_POSITION_OFFSET,
            type_vocab_size=max(1, int(arch.get("type_vocab_size", 0))),
            bos_token_id=special["cls"],
            eos_token_id=special["sep"],
        )
    else:
        out.update(
            model_type="bert",
            architectures=["BertForPreTraining" if config.get("nsp") else "BertForMaskedLM"],
            max_position_embeddings=arch["max_position_embeddings"],
            type_vocab_size=max(1, int(arch.get("type_vocab_size", 0))),
        )
    return out


def _layer(state: Mapping, i: int, prefix: str) -> dict[str, torch.Tensor]:
    src, dst = f"encoder.blocks.{i}.", f"{prefix}.encoder.layer.{i}."
    out = {}
    for part, name in zip(("weight", "bias"), ("weight", "bias")):
        q, k, v = state[src + f"attn.qkv.{part}"].chunk(
            3, dim=0
        )  # rows [q; k; v], as SelfAttention views them
        out[dst + f"attention.self.query.{name}"] = q
        out[dst + f"attention.self.key.{name}"] = k
        out[dst + f"attention.self.value.{name}"] = v
    renames = {
        "attn.out": "attention.output.dense",
        "norm1": "attention.output.LayerNorm",
        "ffn.inp": "intermediate.dense",
        "ffn.out": "output.dense",
        "norm2": "output.LayerNorm",
    }
    for ours, theirs in renames.items():
        for part in ("weight", "bias"):
            out[dst + f"{theirs}.{part}"] = state[src + f"{ours}.{part}"]
    return out


def hf_state_dict(model, family: str) -> dict[str, torch.Tensor]:
    """transformers' weight names and layout for our ``BertForPreTraining``; the tied decoder is left out."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    prefix = family
    emb = "encoder.embeddings."
    width = model.arch["hidden_size"]
    positions = state[emb + "position.embedding.weight"]
    types = state.get(emb + "token_type.weight", torch.zeros(1, width))
    if family == "roberta":
        pad_rows = torch.zeros(ROBERTA_POSITION_OFFSET, width, dtype=positions.dtype)
        positions = torch.cat([pad_rows, positions])
    out = {
        f"{prefix}.embeddings.word_embeddings.weight": state[emb + "word.weight"],
        f"{prefix}.embeddings.position_embeddings.weight": positions,
        f"{prefix}.embeddings.token_type_embeddings.weight": types,
        f"{prefix}.embeddings.LayerNorm.weight": state[emb + "norm.weight"],
        f"{prefix}.embeddings.LayerNorm.bias": state[emb + "norm.bias"],
    }
    for i in range(model.arch["num_layers"]):
        out.update(_layer(state, i, prefix))
    head = "lm_head" if family == "roberta" else "cls.predictions"
    norm = "layer_norm" if family == "roberta" else "transform.LayerNorm"
    dense = "dense" if family == "roberta" else "transform.dense"
    for part in ("weight", "bias"):
        out[f"{head}.{dense}.{part}"] = state[f"head.dense.{part}"]
        out[f"{head}.{norm}.{part}"] = state[f"head.norm.{part}"]
    out[f"{head}.bias"] = state["decoder_bias"]
    if family == "roberta":
        # transformers 4.x ties lm_head.bias to lm_head.decoder.bias after loading, so a folder without
        # the second name loads the decoder bias as zeros there; v5 accepts both names as one tensor.
        out[f"{head}.decoder.bias"] = state["decoder_bias"]
    if family == "bert" and model.nsp:
        for part in ("weight", "bias"):
            out[f"bert.pooler.dense.{part}"] = state[f"pooler.{part}"]
            out[f"cls.seq_relationship.{part}"] = state[f"nsp_head.{part}"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def tokenizer_config(family: str, tokens: Mapping[str, str], model_max_length: int) -> dict:
    """tokenizer_config.json for ``AutoTokenizer`` (the fast tokenizer.json holds everything else)."""
    names = (
        ["input_ids", "attention_mask"]
        if family == "roberta"
        else ["input_ids", "token_type_ids", "attention_mask"]
    )
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "padding_side": "right",
        "truncation_side": "right",
        "clean_up_tokenization_spaces": False,
        "model_input_names": names,
        **{f"{role}_token": token for role, token in tokens.items()},
        **({"bos_token": tokens["cls"], "eos_token": tokens["sep"]} if family == "roberta" else {}),
    }


def export_native(model, config: Mapping, tokenizer, out_dir: str | Path, family: str) -> Path:
    """Write config.json, model.safetensors, tokenizer.json and tokenizer_config.json to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = hf_state_dict(model, family)
    atomic_write(
        out_dir / "model.safetensors", lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"})
    )
    atomic_write(out_dir / "tokenizer.json", lambda tmp: tokenizer.save(str(tmp)))
    max_len = int(config["arch"]["max_position_embeddings"])
    roles = {"cls": "cls", "sep": "sep", "pad": "pad", "unk": "unk", "mask": "mask"}
    tokens = {role: special_tokens_of(tokenizer)[name] for role, name in roles.items()}
    files = {
        "config.json": {
            **hf_config(config, family, special_ids(tokenizer)),
            FRAMING: framing_of(config, tokenizer),
        },
        "tokenizer_config.json": tokenizer_config(family, tokens, max_len),
        "special_tokens_map.json": {f"{role}_token": token for role, token in tokens.items()},
    }
    write_json_files(out_dir, files)
    return out_dir
