"""One held-out text, masked once, scored the same way for every recipe: a fair MLM quality figure.

The text is the raw validation documents (``data.validation_files``, or the hub's held-out head),
optionally cut to a fixed number of characters. Each recipe tokenizes it with its own tokenizer and
frames it as it frames its training input (``[SEP]`` after every document, packed across documents
with the data pipeline's own ``Packer``; ``[CLS] ... [SEP]`` per sequence when ``data.cls_per_sequence``
is true or the recipe is BERT's NSP one, whose pairs become single ``[CLS] A [SEP]`` segments here;
``<s>``/``</s>`` for a byte-level BPE tokenizer). Nothing is filtered and nothing is dropped: the last
sequence is padded (and the padding masked out of attention).

Masking is chosen per document, before packing, from a generator seeded by ``(seed, document index)``:
exactly ``round(rate * tokens)`` of a document's tokens (at least one), so two recipes that share a
tokenizer mask the same character spans whatever their packing, ``seq_len`` or training masking rate.
Style ``mask`` (the default) replaces every chosen token by ``[MASK]``; ``bert`` uses 80/10/10.

Scores (fp32, eval mode, no dropout):

- ``nats_per_masked_token`` = sum of the masked tokens' NLL / their count (comparable only between
  runs with the same tokenizer and the same evaluation masking);
- ``bits_per_char`` = sum NLL / ln 2 / characters covered by the masked tokens. A token covers the
  characters from the end of the previous token of its document (or the document start) to its own
  end, per the tokenizer's offsets: every character of a document belongs to exactly one token
  (white space to the token after it, whatever the tokenizer does with spaces), so the figure is
  comparable across tokenizers.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cramming.data.packing import Packer, token_stream
from cramming.data.tokenizer import special_ids
from cramming.models import IGNORE_INDEX

MASK_STYLES = ("mask", "bert")
DEFAULTS = {"every_tokens": 0, "chars": 1_000_000, "mask_rate": 0.15, "mask_style": "mask", "seed": 0}
DEFAULTS["batch_size"] = 32


def read_documents(documents: Iterable[str], max_chars: int = 0) -> list[str]:
    """The documents in order; with ``max_chars`` > 0 exactly that many characters (the last one cut)."""
    out, total = [], 0
    for doc in documents:
        if max_chars > 0 and total + len(doc) >= max_chars:
            out.append(doc[: max_chars - total])
            return out
        out.append(doc)
        total += len(doc)
    return out


def heldout_documents(data_cfg: Mapping, max_chars: int = 0) -> list[str] | None:
    """The raw validation documents of a data config, or None when it has none (or is pre-tokenized)."""
    from cramming.data import sources

    if data_cfg.get("readymade"):
        return None
    docs = sources.valid_documents(dict(data_cfg))
    return None if docs is None else read_documents(docs, max_chars)


def framed(data_cfg: Mapping) -> bool:
    """Whether each sequence is ``[CLS] ... [SEP]`` (as ``data.cls_per_sequence``; BERT's pairs too)."""
    return bool(data_cfg.get("cls_per_sequence", True)) or data_cfg.get("objective", "mlm") == "nsp"


def chars_covered(offsets: np.ndarray) -> np.ndarray:
    """(n,) characters each token covers: from the previous token's end (or 0) to its own end."""
    ends = np.maximum.accumulate(np.asarray(offsets, np.int64).reshape(-1, 2)[:, 1]) if len(offsets) else []
    ends = np.asarray(ends, np.int64)
    return np.diff(np.concatenate([[0], ends])).astype(np.int64)


@dataclass
class HeldoutSet:
    """The packed, masked held-out text: (N, T) arrays plus what identifies it."""

    input_ids: np.ndarray  # (N, T) with the evaluation masking applied
    labels: np.ndarray  # (N, T) original ids at masked positions, IGNORE_INDEX elsewhere
    chars: np.ndarray  # (N, T) characters covered by each token (0 on framing tokens and padding)
    real: np.ndarray  # (N, T) bool, False on the final padding
    info: dict


def mask_document(
    ids: np.ndarray, index: int, settings: Mapping, vocab: Mapping
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) of one document's ids; the choice depends only on (seed, index, len(ids))."""
    rng = np.random.default_rng([int(settings["seed"]), index])
    n = len(ids)
    labels = np.full(n, IGNORE_INDEX, np.int64)
    if n == 0:
        return ids.astype(np.int64), labels
    k = max(1, round(float(settings["mask_rate"]) * n))
    chosen = np.sort(rng.choice(n, size=k, replace=False))
    action = rng.random(k)
    labels[chosen] = ids[chosen]
    inputs = ids.astype(np.int64).copy()
    if settings["mask_style"] == "mask":
        inputs[chosen] = vocab["mask"]
    else:  # BERT's 80/10/10
        random_ids = vocab["replacements"][rng.integers(len(vocab["replacements"]), size=k)]
        inputs[chosen] = np.where(
            action < 0.8, vocab["mask"], np.where(action < 0.9, random_ids, ids[chosen])
        )
    return inputs, labels


def pack(streams: dict[str, np.ndarray], seq_len: int, fill: dict[str, dict], framed_: bool) -> dict:
    """Pack parallel streams with the pipeline's Packer; the remainder becomes one padded sequence."""
    out = {}
    for name, stream in streams.items():
        packer = Packer(seq_len, fill[name], cls_per_sequence=framed_)
        rows = [packer.add(stream.astype(np.int32))]
        if framed_:
            rows.append(packer.finish())
        elif len(packer.carry):  # the unframed layout drops it in training; the held-out text keeps it
            last = np.full((1, seq_len), fill[name]["pad"], np.int32)
            last[0, : len(packer.carry)] = packer.carry
            rows.append(last)
        out[name] = np.concatenate(rows).astype(np.int64)
    return out


def build_heldout(
    documents: list[str], tokenizer, data_cfg: Mapping, settings: Mapping | None = None
) -> HeldoutSet:
    """Tokenize, mask per document and pack ``documents`` the way ``data_cfg``'s recipe frames input."""
    settings = {**DEFAULTS, **(settings or {})}
    check_settings(settings)
    special = special_ids(tokenizer)
    vocab_size = tokenizer.get_vocab_size()
    allowed = np.setdiff1d(np.arange(vocab_size), list(special.values()))
    vocab = {"mask": special["mask"], "replacements": allowed}
    encodings = tokenizer.encode_batch(documents, add_special_tokens=False)
    inputs, labels, chars, spans = [], [], [], hashlib.sha256()
    for index, enc in enumerate(encodings):
        ids = np.asarray(enc.ids, np.int64)
        masked, lab = mask_document(ids, index, settings, vocab)
        covered = chars_covered(np.asarray(enc.offsets, np.int64))
        inputs.append(masked)
        labels.append(lab)
        chars.append(covered)
        ends = np.cumsum(covered)
        picked = np.flatnonzero(lab != IGNORE_INDEX)
        spans.update(
            np.stack([np.full(len(picked), index), ends[picked] - covered[picked], ends[picked]]).tobytes()
        )
    seq_len = int(data_cfg["seq_len"])
    is_framed = framed(data_cfg)
    streams = {
        "input_ids": token_stream(inputs, special["sep"]),
        "labels": token_stream(labels, IGNORE_INDEX),
        "chars": token_stream(chars, 0),
        "real": token_stream([np.ones(len(x), np.int64) for x in inputs], 1),
    }
    fill = {
        "input_ids": special,
        "labels": {"cls": IGNORE_INDEX, "sep": IGNORE_INDEX, "pad": IGNORE_INDEX},
        "chars": {"cls": 0, "sep": 0, "pad": 0},
        "real": {"cls": 1, "sep": 1, "pad": 0},
    }
    packed = pack(streams, seq_len, fill, is_framed)
    masked_tokens = int((packed["labels"] != IGNORE_INDEX).sum())
    info = {
        "documents": len(documents),
        "chars": sum(len(d) for d in documents),
        "tokens": int(sum(len(x) for x in inputs)),
        "masked_tokens": masked_tokens,
        "masked_chars": int(packed["chars"][packed["labels"] != IGNORE_INDEX].sum()),
        "sequences": len(packed["input_ids"]),
        "seq_len": seq_len,
        "cls_per_sequence": is_framed,
        "text_sha": hashlib.sha256("\x00".join(documents).encode()).hexdigest()[:16],
        "masked_spans_sha": spans.hexdigest()[:16],
        "tokenizer_sha": hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:16],
        **{k: settings[k] for k in ("mask_rate", "mask_style", "seed")},
    }
    real = packed["real"].astype(bool)
    return HeldoutSet(packed["input_ids"], packed["labels"], packed["chars"], real, info)


def check_settings(settings: Mapping) -> None:
    rate = float(settings["mask_rate"])
    if not 0.0 < rate < 1.0:
        raise ValueError(f"held-out mask_rate={settings['mask_rate']!r} must lie in (0, 1)")
    if settings["mask_style"] not in MASK_STYLES:
        raise ValueError(f"held-out mask_style={settings['mask_style']!r} is not one of {list(MASK_STYLES)}")


def masked_logits(out: Mapping, labels: torch.Tensor) -> torch.Tensor:
    """(M, V) logits of the labelled positions, in row-major order, from a model's output."""
    logits = out["logits"]
    if logits.dim() == 3:  # dense prediction: (B, T, V)
        return logits[labels != IGNORE_INDEX]
    return logits  # sparse prediction already decoded only the labelled positions, in this order


@torch.no_grad()
def score(model: torch.nn.Module, heldout: HeldoutSet, batch_size: int = 32, device="cpu") -> dict:
    """Sum of the masked tokens' NLL -> nats per masked token and bits per character (fp32, eval mode)."""
    model = getattr(model, "student", model)  # distillation trains a wrapper; its student is the model
    was_training = model.training
    model.eval()
    nll = 0.0
    try:
        for start in range(0, len(heldout.input_ids), batch_size):
            part = slice(start, start + batch_size)
            labels = torch.as_tensor(heldout.labels[part], device=device)
            if not (labels != IGNORE_INDEX).any():
                continue
            kwargs = {"input_ids": torch.as_tensor(heldout.input_ids[part], device=device), "labels": labels}
            real = heldout.real[part]
            if not real.all():
                kwargs["attention_mask"] = torch.as_tensor(real, device=device).long()
            with torch.autocast(torch.device(device).type, enabled=False):
                logits = masked_logits(model(**kwargs), labels).float()
            nll += float(F.cross_entropy(logits, labels[labels != IGNORE_INDEX], reduction="sum").double())
    finally:
        model.train(was_training)
    return summarize(nll, heldout.info)


def summarize(nll_sum: float, info: Mapping) -> dict:
    """The two figures from a sum of NLL (nats) over the masked tokens described by ``info``."""
    tokens, chars = info["masked_tokens"], info["masked_chars"]
    return {
        "nats_per_masked_token": nll_sum / max(tokens, 1),
        "bits_per_char": nll_sum / math.log(2) / max(chars, 1),
        "nll_sum": nll_sum,
        **info,
    }


class PeriodicScorer:
    """The training loop's hook (``train.heldout``): the held-out text scored every ``every_tokens``.

    The text is read, tokenized and masked on first use (``every_tokens`` > 0 only), so runs that do
    not ask for it pay nothing.
    """

    def __init__(self, settings: Mapping | None, data_cfg: Mapping, tokenizer):
        self.settings = {**DEFAULTS, **dict(settings or {})}
        check_settings(self.settings)
        self.every = int(self.settings["every_tokens"])
        self.data_cfg, self.tokenizer = data_cfg, tokenizer
        self.next: int | None = None  # the token count of the next evaluation
        self.heldout: HeldoutSet | None | bool = None  # False: the config has no held-out text

    def start(self, tokens: int) -> None:
        """Training starts (or resumes) at ``tokens``: the next evaluation is at the next multiple."""
        self.next = (tokens // self.every + 1) * self.every if self.every > 0 else None

    def due(self, tokens: int) -> bool:
        if self.every <= 0:
            return False
        if self.next is None:
            self.start(0)
        if tokens < self.next:
            return False
        self.next = (tokens // self.every + 1) * self.every
        return True

    def __call__(self, model: torch.nn.Module, device) -> dict | None:
        if self.heldout is None:
            docs = heldout_documents(self.data_cfg, int(self.settings["chars"]))
            self.heldout = (
                build_heldout(docs, self.tokenizer, self.data_cfg, self.settings) if docs else False
            )
        if self.heldout is False:
            return None
        return score(model, self.heldout, int(self.settings["batch_size"]), device)
