"""Hugging Face configuration for crammed-BERT models exported by `cramming` (remote code).

This file is copied next to the weights by ``python -m cramming.export`` and loaded by
``transformers`` with ``trust_remote_code=True``. It imports nothing from ``cramming``.
The architecture is the ``arch`` dict of the cramming config, kept verbatim; the usual
Hugging Face names (hidden_size, num_hidden_layers, ...) are derived from it.
"""

from __future__ import annotations

from transformers import PretrainedConfig

# The shape of crammed-BERT (the `crammed-bert` arch of cramming), used for keys missing from `arch`.
DEFAULT_ARCH = {
    "hidden_size": 768,
    "num_layers": 16,
    "num_heads": 12,
    "intermediate_size": 3072,
    "ffn": "glu",
    "activation": "gelu",
    "norm_position": "pre",
    "norm_eps": 1e-12,
    "norm_bias": True,
    "linear_bias": False,
    "embedding_norm": True,
    "final_norm": True,
    "position_embedding": "scaled-sinusoidal",
    "max_position_embeddings": 512,
    "type_vocab_size": 0,
    "prediction_head": False,
    "tie_embeddings": True,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "init_std": 0.02,
}


class CrammingConfig(PretrainedConfig):
    model_type = "cramming-bert"

    def __init__(
        self,
        arch: dict | None = None,
        vocab_size: int = 32768,
        pad_token_id: int = 0,
        decoder_bias: bool = False,
        nsp: bool = False,
        **kwargs,
    ):
        # Derived names are written to config.json for tools that read them; `arch` is the source of truth.
        for derived in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                        "max_position_embeddings", "type_vocab_size", "layer_norm_eps"):  # fmt: skip
            kwargs.pop(derived, None)
        self.arch = {**DEFAULT_ARCH, **(arch or {})}
        self.vocab_size = vocab_size
        self.decoder_bias = bool(decoder_bias)  # the MLM decoder's output bias (recipe=bert / roberta models)
        self.nsp = bool(nsp)  # BERT's pooler + next-sentence head (recipe=bert trained with NSP)
        self.hidden_size = self.arch["hidden_size"]
        self.num_hidden_layers = self.arch["num_layers"]
        self.num_attention_heads = self.arch["num_heads"]
        self.intermediate_size = self.arch["intermediate_size"]
        self.max_position_embeddings = self.arch["max_position_embeddings"]
        self.type_vocab_size = self.arch["type_vocab_size"]
        self.layer_norm_eps = self.arch["norm_eps"]
        kwargs.setdefault("tie_word_embeddings", bool(self.arch["tie_embeddings"]))
        super().__init__(pad_token_id=pad_token_id, **kwargs)
