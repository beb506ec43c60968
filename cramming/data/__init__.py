"""Data pipeline: corpus sources, filters, WordPiece tokenizer, packing, on-disk cache, loader, MLM masking.

validate_data_config(data_cfg)          # fast checks before long work
corpus = prepare_corpus(data_cfg)       # tokenizer + packed, cached train/valid sequences
loader = SequenceLoader(corpus.train, batch_size, seed, rank, world_size, device)
inputs, labels = MLMCollator(corpus.vocab_size, corpus.special_ids)(next(loader), generator)
"""

from cramming.data.collator import IGNORE_INDEX, MLMCollator
from cramming.data.config import as_dict, validate_data_config
from cramming.data.loader import SequenceLoader
from cramming.data.packing import PackedSequences, unpack_documents
from cramming.data.prepare import PreparedCorpus, prepare_corpus

__all__ = [
    "IGNORE_INDEX",
    "MLMCollator",
    "PackedSequences",
    "PreparedCorpus",
    "SequenceLoader",
    "as_dict",
    "prepare_corpus",
    "unpack_documents",
    "validate_data_config",
]
