"""Data pipeline: corpus sources, filters, WordPiece tokenizer, packing, curriculum ordering, pre-tokenized
hub corpora, on-disk cache, loader, MLM masking.

    validate_data_config(data_cfg)          # fast checks before long work
    corpus = prepare_corpus(data_cfg)       # tokenizer + packed, cached train/valid sequences
    loader = SequenceLoader(corpus.train, batch_size, seed, rank, world_size, device)
    batch = MLMCollator(corpus.vocab_size, corpus.special_ids)(next(loader), generator)
    loss = model(**batch)["loss"]           # input_ids (B, T), masked_positions and labels (B, k)

``IGNORE_INDEX`` (the label of a position without a target) is the model's: ``cramming.models``.

The torch-dependent names (loader, masking) load on first use, so preparation workers that import
``cramming.data.encode`` start without importing torch.
"""

from cramming.data.config import as_dict, validate_data_config
from cramming.data.packing import PackedSequences, unpack_documents
from cramming.data.prepare import PreparedCorpus, corpus_key, prepare_corpus

_LAZY = {
    "MLMCollator": "cramming.data.masking",
    "SequenceLoader": "cramming.data.loader",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cramming.data' has no attribute {name!r}")


__all__ = [
    "MLMCollator",
    "PackedSequences",
    "PreparedCorpus",
    "SequenceLoader",
    "as_dict",
    "corpus_key",
    "prepare_corpus",
    "unpack_documents",
    "validate_data_config",
]
