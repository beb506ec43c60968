"""Texts to token ids, and token ids to padded batches: what fine-tuning and prediction feed the model.

    data = encode_examples(tokenizer, texts_a, texts_b, labels=[0, 1, ...], max_len=128)
    batches = length_batches(data.lengths, 16, shuffle=True, rng=rng)
    batch = collate(data, batches[0], device)     # input_ids, token_type_ids, attention_mask (B, T), labels (B,)

Batches are padded per batch (never to max_len) and built from examples of similar length,
which is what makes fine-tuning on a CPU affordable. Under ``torch.compile`` training batches are
padded up to one of four bucket lengths instead (``bucket_lengths``), so the compiled step sees a
few shapes and compiles a few times, not once per length. Labels are class indices (int) for
classification and floats for regression (``num_labels == 1``); mapping label names to
indices is the caller's job (``cramming.finetune.labels``, ``cramming.glue.tasks``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer
from tokenizers.processors import TemplateProcessing


@dataclass
class EncodedExamples:
    """Token ids of variable length (no padding), their segment ids, and optional labels."""

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray]
    labels: np.ndarray | None = None  # (N,) int64 class indices or float32 targets
    pad_id: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self))

    def select(self, indices: Sequence[int]) -> EncodedExamples:
        indices = [int(i) for i in indices]
        return EncodedExamples(
            [self.input_ids[i] for i in indices],
            [self.token_type_ids[i] for i in indices],
            None if self.labels is None else self.labels[indices],
            self.pad_id,
        )


def prepare_tokenizer(tokenizer: Tokenizer, max_len: int) -> Tokenizer:
    """A copy that truncates to ``max_len``, never pads, and adds [CLS] a [SEP] (b [SEP]).

    Exports from pretraining carry a BERT TemplateProcessing post-processor; one is added
    here for tokenizers without it, so sentence pairs are always encoded the same way.
    """
    tok = Tokenizer.from_str(tokenizer.to_str())
    if tok.post_processor is None:
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        if cls_id is None or sep_id is None:
            raise ValueError("the tokenizer has no post-processor and no [CLS]/[SEP] tokens to add")
        tok.post_processor = TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
    tok.no_padding()
    tok.enable_truncation(max_length=max_len, strategy="longest_first")
    return tok


def encode_examples(
    tokenizer: Tokenizer,
    texts_a: Sequence[str],
    texts_b: Sequence[str] | None = None,
    labels: Sequence | np.ndarray | None = None,
    max_len: int = 128,
    regression: bool = False,
) -> EncodedExamples:
    """Tokenize single sentences or sentence pairs; ``labels`` are class indices (floats if regression)."""
    if texts_b is not None and len(texts_b) != len(texts_a):
        raise ValueError(f"texts_a has {len(texts_a)} entries but texts_b has {len(texts_b)}")
    if labels is not None and len(labels) != len(texts_a):
        raise ValueError(f"texts_a has {len(texts_a)} entries but labels has {len(labels)}")
    tok = prepare_tokenizer(tokenizer, max_len)
    inputs = list(texts_a) if texts_b is None else list(zip(texts_a, texts_b))
    encodings = tok.encode_batch(inputs) if inputs else []
    pad_id = tok.token_to_id("[PAD]")
    if pad_id is None:  # a byte-level BPE tokenizer (recipe=roberta)
        pad_id = tok.token_to_id("<pad>")
    label_array = None
    if labels is not None:
        label_array = np.asarray(labels, dtype=np.float32 if regression else np.int64)
    return EncodedExamples(
        [np.asarray(e.ids, dtype=np.int64) for e in encodings],
        [np.asarray(e.type_ids, dtype=np.int64) for e in encodings],
        label_array,
        0 if pad_id is None else pad_id,
    )


def length_batches(
    lengths: np.ndarray,
    batch_size: int,
    shuffle: bool,
    rng: np.random.Generator | None = None,
    bucket: int = 50,
) -> list[np.ndarray]:
    """Index batches of similar-length examples.

    Without shuffling: sorted longest first (inference; the caller restores the order).
    With shuffling: a random permutation is cut into chunks of ``bucket`` batches, each
    chunk sorted by length and cut into batches, and the batches shuffled, so padding stays
    small while every epoch sees a different order.
    """
    if not shuffle:
        order = np.argsort(-lengths, kind="stable")
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng = rng or np.random.default_rng()
    perm = rng.permutation(len(lengths))
    chunk = batch_size * bucket
    batches = []
    for start in range(0, len(perm), chunk):
        part = perm[start : start + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def bucket_lengths(longest: int, count: int = 4, multiple: int = 8) -> tuple[int, ...]:
    """``count`` padded lengths up to ``longest`` (rounded up to ``multiple``): 32, 64, 96, 128 for 128.

    Under torch.compile every batch shape is a compiled graph: with 4 lengths and 2 batch sizes
    (full batches and an epoch's one short batch) fine-tuning stays within Dynamo's default limit of
    8 graphs per function, where per-batch padding would recompile for nearly every length.
    """
    top = -(-max(1, longest) // multiple) * multiple
    return tuple(sorted({-(-top * i // count // multiple) * multiple for i in range(1, count + 1)}))


def collate(
    data: EncodedExamples, indices: np.ndarray, device: torch.device, buckets: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
    """Pad one batch to its own longest example, or to the smallest of ``buckets`` that holds it;
    attention_mask is 1 for real tokens (padding changes no result: padded keys are masked)."""
    width = max(len(data.input_ids[i]) for i in indices)
    if buckets:
        width = min((b for b in buckets if b >= width), default=width)
    ids = np.full((len(indices), width), data.pad_id, dtype=np.int64)  # (B, T)
    types = np.zeros((len(indices), width), dtype=np.int64)
    mask = np.zeros((len(indices), width), dtype=np.int64)
    for row, i in enumerate(indices):
        n = len(data.input_ids[i])
        ids[row, :n], types[row, :n], mask[row, :n] = data.input_ids[i], data.token_type_ids[i], 1
    batch = {
        "input_ids": torch.from_numpy(ids),
        "token_type_ids": torch.from_numpy(types),
        "attention_mask": torch.from_numpy(mask),
    }
    if data.labels is not None:
        batch["labels"] = torch.from_numpy(data.labels[indices])
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}
