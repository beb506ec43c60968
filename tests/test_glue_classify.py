"""The fine-tuning engine (cramming.finetune): encoding, batching, training that learns, prediction order."""

import numpy as np
import pytest
import torch
from _glue_fixtures import tiny_arch, train_tokenizer

from cramming.config.finetune import FinetuneSettings, resolve_lr
from cramming.finetune.encode import collate, encode_examples, length_batches, prepare_tokenizer
from cramming.finetune.engine import finetune, predict, softmax
from cramming.finetune.metrics import accuracy
from cramming.kernels import dispatch as ops
from cramming.models import build_classifier
from cramming.runtime import Runtime

CPU_FP32 = Runtime(torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def tokenizer(tiny_corpus):
    return train_tokenizer(tiny_corpus["train"], lines=500, vocab_size=500)


@pytest.fixture(autouse=True)
def torch_ops():
    # The Triton interpreter (TRITON_INTERPRET=1 in conftest) is far too slow for training loops.
    # One thread: the cores are shared with other jobs, and oversubscribed threads spin (much slower).
    ops.configure({"kernels": "torch"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    ops.configure({"kernels": "auto"})


def test_pair_encoding_uses_cls_sep_template_and_truncates(tokenizer):
    data = encode_examples(tokenizer, ["the cat sat", "a " * 300], ["on the mat", "b " * 300], max_len=16)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    first = data.input_ids[0]
    assert first[0] == cls_id and first[-1] == sep_id and (first == sep_id).sum() == 2
    assert data.token_type_ids[0][-1] == 1 and data.token_type_ids[0][0] == 0
    assert len(data.input_ids[1]) == 16  # truncated pair keeps both [SEP]s
    assert (data.input_ids[1] == sep_id).sum() == 2
    assert data.pad_id == tokenizer.token_to_id("[PAD]")


def test_tokenizer_without_post_processor_gets_cls_sep(tiny_corpus):
    bare = train_tokenizer(tiny_corpus["train"], lines=200, vocab_size=300, post_processor=False)
    assert bare.post_processor is None
    tok = prepare_tokenizer(bare, 32)
    enc = tok.encode("hello", "world")
    assert enc.tokens[0] == "[CLS]" and enc.tokens.count("[SEP]") == 2
    assert bare.post_processor is None  # the caller's tokenizer is left untouched


def test_length_batches_cover_all_once_and_group_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 120, size=1000)
    batches = length_batches(lengths, 16, shuffle=True, rng=rng)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    naive = sum(len(b) * lengths[b].max() for b in np.array_split(rng.permutation(1000), len(batches)))
    assert padded < 0.7 * naive  # bucketing cuts padding
    sorted_batches = length_batches(lengths, 16, shuffle=False)
    assert lengths[sorted_batches[0]].min() >= lengths[sorted_batches[-1]].max()


def test_collate_pads_per_batch_with_mask(tokenizer):
    data = encode_examples(tokenizer, ["a b c d e f", "a"], labels=[1, 0])
    batch = collate(data, np.array([0, 1]), torch.device("cpu"))
    width = len(data.input_ids[0])
    assert batch["input_ids"].shape == (2, width)
    assert batch["attention_mask"][1].sum().item() == len(data.input_ids[1])
    assert batch["input_ids"][1, -1].item() == data.pad_id
    assert batch["labels"].tolist() == [1, 0]


def _synthetic(n: int, rng: np.random.Generator):
    """Filler words plus one cue word; the label is which cue word appears."""
    filler = ["the", "of", "and", "in", "was", "for", "with", "on", "by", "from"]
    # Whole tokens of the 500-token tokenizer trained on the tiny corpus (book text), so each cue is one
    # input id: with cues split into rare pieces the 4-epoch regression below stays near the mean.
    cues = ["king", "time"]
    texts, labels = [], []
    for _ in range(n):
        words = list(rng.choice(filler, size=rng.integers(3, 12)))
        label = int(rng.integers(2))
        words.insert(int(rng.integers(len(words) + 1)), cues[label])
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def test_finetune_learns_a_separable_task_and_predict_keeps_order(tokenizer):
    rng = np.random.default_rng(0)
    train_texts, train_labels = _synthetic(320, rng)
    dev_texts, dev_labels = _synthetic(200, rng)
    train = encode_examples(tokenizer, train_texts, labels=train_labels, max_len=32)
    dev = encode_examples(tokenizer, dev_texts, labels=dev_labels, max_len=32)
    torch.manual_seed(0)
    model = build_classifier(tiny_arch(), tokenizer.get_vocab_size(), num_labels=2)
    before = accuracy(dev_labels, predict(model, dev, runtime=CPU_FP32).argmax(-1))
    cfg = FinetuneSettings(lr=1e-3, batch_size=16, epochs=3, log_every=0)
    finetune(model, train, cfg, CPU_FP32, seed=0)
    logits = predict(model, dev, batch_size=7, runtime=CPU_FP32)
    after = accuracy(dev_labels, logits.argmax(-1))
    assert after > 0.9, (before, after)
    # the same examples one at a time give the same logits: order restored, padding masked
    single = np.concatenate([predict(model, dev.select([i]), runtime=CPU_FP32) for i in range(5)])
    np.testing.assert_allclose(single, logits[:5], atol=1e-4)
    probs = softmax(logits)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def test_finetune_regression_reduces_error(tokenizer):
    rng = np.random.default_rng(1)
    texts, labels = _synthetic(160, rng)
    targets = [4.0 * y + 0.5 for y in labels]
    data = encode_examples(tokenizer, texts, labels=targets, max_len=32, regression=True)
    assert data.labels.dtype == np.float32
    torch.manual_seed(0)
    model = build_classifier(tiny_arch(), tokenizer.get_vocab_size(), num_labels=1)
    mse_before = float(np.mean((predict(model, data, runtime=CPU_FP32)[:, 0] - data.labels) ** 2))
    finetune(model, data, FinetuneSettings(lr=3e-3, epochs=4, log_every=0), CPU_FP32, seed=0)
    mse_after = float(np.mean((predict(model, data, runtime=CPU_FP32)[:, 0] - data.labels) ** 2))
    # Predicting the mean (2.5) leaves an MSE of 4.0: below 1.0 the model has read the cue word.
    assert mse_after < 1.0 < mse_before


def test_bad_config_values_are_rejected():
    with pytest.raises(ValueError, match="lr"):
        FinetuneSettings(lr=0)
    with pytest.raises(ValueError, match=r"dropout=1.0 must be a number in \[0, 1\)"):
        FinetuneSettings(dropout=1.0)  # GLUE once allowed up to 0.9 only, finetune below 1: one rule now
    with pytest.raises(ValueError, match="warmup_fraction"):
        FinetuneSettings(warmup_fraction=1.0)


def test_auto_lr_scales_with_width():
    assert resolve_lr("auto", 768) == pytest.approx(4e-5)  # the GLUE-sane protocol's own value
    assert resolve_lr("auto", 128) == pytest.approx(2.4e-4)
    assert resolve_lr(1e-4, 128) == 1e-4
    for bad in (0, -1e-3, 2.0, "fast", True):
        with pytest.raises(ValueError, match="auto"):
            resolve_lr(bad, 768)
