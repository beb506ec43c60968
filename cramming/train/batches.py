"""The pretraining batches: the masking collator, the data cursor, and the thread that makes batches ahead."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from cramming.data.masking import build_collator as build_recipe_collator
from cramming.data.masking import uses_bert_family
from cramming.data.prefetch import BatchStream


def build_collator(data_cfg: Mapping, corpus):
    """Crammed MLM masking, or recipe=bert / roberta's own batches (NSP pairs, whole-word masking)."""
    from cramming.data import MLMCollator

    vocab, special = corpus.tokenizer.get_vocab_size(), corpus.special_ids
    if uses_bert_family(data_cfg):
        return build_recipe_collator(data_cfg, vocab, special)
    return MLMCollator(vocab, special, float(data_cfg["mlm_probability"]))


def build_batches(cfg: Mapping, corpus, collator, runtime) -> tuple:
    """(loader, mask generator, batch stream) of this rank; ``cfg.train.microbatch_size`` already resolved."""
    from cramming.data import SequenceLoader

    seed, micro = int(cfg["seed"]), int(cfg["train"]["microbatch_size"])
    loader = SequenceLoader(corpus.train, micro, seed=seed, rank=runtime.rank, world_size=runtime.world_size)
    mask_generator = torch.Generator().manual_seed(seed + runtime.rank)
    # Batches made ahead in a background thread (impl.dataloader_workers of them), pinned for the GPU.
    batches = BatchStream(
        loader,
        collator,
        mask_generator,
        depth=int(cfg["impl"]["dataloader_workers"]),
        pin=runtime.device.type == "cuda",
        delay_s=float(cfg["train"]["debug_data_delay_s"]),  # testing aid: a slow disk
    )
    return loader, mask_generator, batches
