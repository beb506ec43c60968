"""cramming/heldout.py: one held-out text, masked once, scored in nats per masked token and bits per char."""

import math
import time

import numpy as np
import pytest
import torch

from cramming.budget import BudgetClock, parse_budget
from cramming.data.sources import iter_local
from cramming.data.tokenizer import tokenizer_from_vocab, train_tokenizer
from cramming.heldout import PeriodicScorer, build_heldout, chars_covered, read_documents, score
from cramming.models import IGNORE_INDEX

SETTINGS = {"mask_rate": 0.15, "mask_style": "mask", "seed": 0}


@pytest.fixture(scope="module")
def valid_docs(tiny_corpus):
    return read_documents(iter_local([str(tiny_corpus["valid"])], "text", "validation_files"), 60_000)


@pytest.fixture(scope="module")
def wordpiece(tiny_corpus):
    docs = list(iter_local([str(tiny_corpus["train"])], "text"))
    return train_tokenizer(docs, 1024, {"lowercase": True, "strip_accents": True, "ascii_only": True})


def masked_stream(held):
    """The masked tokens' labels and covered characters in text order (row-major over the packing)."""
    picked = held.labels != IGNORE_INDEX
    return held.labels[picked], held.chars[picked]


@pytest.mark.parametrize(
    "layout",
    [{"seq_len": 128, "cls_per_sequence": True}, {"seq_len": 64, "cls_per_sequence": False},
     {"seq_len": 128, "cls_per_sequence": False, "objective": "nsp"}],
)  # fmt: skip
def test_packing_does_not_change_the_scored_text(valid_docs, wordpiece, layout):
    """Catches the old instrument's flaw: variants that differ only in packing (CLS per sequence or not,
    seq_len) scored on different text and masks (it took the first sequences of each variant's packing).
    Here the same characters are scored, with the same tokens masked, in the same order."""
    base = build_heldout(valid_docs, wordpiece, {"seq_len": 128, "cls_per_sequence": False}, SETTINGS)
    other = build_heldout(valid_docs, wordpiece, layout, SETTINGS)
    assert base.info["text_sha"] == other.info["text_sha"] and base.info["chars"] == sum(map(len, valid_docs))
    assert base.info["masked_spans_sha"] == other.info["masked_spans_sha"]
    assert base.info["masked_tokens"] == other.info["masked_tokens"] > 0.1 * base.info["tokens"]
    for a, b in zip(masked_stream(base), masked_stream(other)):
        np.testing.assert_array_equal(a, b)
    assert base.input_ids.shape[1] == 128 and other.input_ids.shape[1] == layout["seq_len"]
    if layout["cls_per_sequence"] or layout.get("objective") == "nsp":
        assert (other.input_ids[:, 0] == wordpiece.token_to_id("[CLS]")).all()
    # nothing dropped: every token of every document is in the packing (plus one [SEP] per document)
    assert other.real.sum() >= base.info["tokens"] + len(valid_docs)


def test_masking_rate_is_the_evaluation_rate_not_the_training_rate(valid_docs, wordpiece):
    """Catches: the held-out masking following the variant's training rate (25% crammed vs 15% BERT)."""
    cfg = {"seq_len": 128, "cls_per_sequence": False, "mlm_probability": 0.4}
    held = build_heldout(valid_docs, wordpiece, cfg, SETTINGS)
    assert held.info["masked_tokens"] / held.info["tokens"] == pytest.approx(0.15, abs=0.01)
    masked = held.labels != IGNORE_INDEX
    assert (held.input_ids[masked] == wordpiece.token_to_id("[MASK]")).all()  # mask style: all [MASK]
    bert = build_heldout(valid_docs, wordpiece, cfg, {**SETTINGS, "mask_style": "bert"})
    share = (bert.input_ids[masked] == wordpiece.token_to_id("[MASK]")).mean()
    assert 0.7 < share < 0.9  # 80/10/10
    np.testing.assert_array_equal(bert.labels, held.labels)  # the same positions either way


class UniformModel(torch.nn.Module):
    """Equal logits over V tokens: every masked token's NLL is exactly ln V."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, labels, attention_mask=None):
        return {"logits": torch.zeros(int((labels != IGNORE_INDEX).sum()), self.vocab)}


def test_bits_per_char_on_a_hand_built_case(tmp_path):
    """Catches a wrong BPC formula (nats not divided by ln 2, tokens instead of characters, spaces
    not counted): two documents of known tokens, all masked, scored by a model with known NLL."""
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "aa", "bbb", "c"]) + "\n")
    tok = tokenizer_from_vocab(str(vocab), {"lowercase": True, "strip_accents": True, "ascii_only": True})
    docs = ["aa bbb", "c aa"]  # tokens cover 2 + 4 (" bbb") and 1 + 3 (" aa") = 10 characters
    assert list(chars_covered(np.array([[0, 2], [3, 6]]))) == [2, 4]
    held = build_heldout(docs, tok, {"seq_len": 8, "cls_per_sequence": True}, {**SETTINGS, "mask_rate": 0.99})
    assert held.info["masked_tokens"] == 4 and held.info["masked_chars"] == 10
    result = score(UniformModel(8), held)
    assert result["nats_per_masked_token"] == pytest.approx(math.log(8))
    assert result["bits_per_char"] == pytest.approx(4 * math.log(8) / math.log(2) / 10)  # 1.2 bits


def test_periodic_scorer_is_due_every_n_tokens(valid_docs, wordpiece):
    """Catches: evaluations skipped or repeated when a step's tokens jump over a multiple of N, or a
    resumed run re-scoring points it already has."""
    scorer = PeriodicScorer({"every_tokens": 1000}, {"seq_len": 128}, wordpiece)
    assert [t for t in range(0, 5000, 384) if scorer.due(t)] == [1152, 2304, 3072, 4224]
    resumed = PeriodicScorer({"every_tokens": 1000}, {"seq_len": 128}, wordpiece)
    resumed.start(2304)
    assert not resumed.due(2688) and resumed.due(3072)
    assert not PeriodicScorer(None, {"seq_len": 128}, wordpiece).due(10**9)  # off by default
    with pytest.raises(ValueError, match="mask_rate"):
        PeriodicScorer({"mask_rate": 1.5}, {}, wordpiece)


def test_paused_clock_does_not_charge_evaluation_time():
    """Catches: periodic evaluation eating into a wall-clock budget (fewer training steps for a variant
    that evaluates more often)."""
    clock = BudgetClock(parse_budget("1h"))
    clock.start()
    with clock.paused():
        time.sleep(0.2)
    assert clock.elapsed() < 0.1


@pytest.mark.parametrize("family", ["crammed", "bert-nsp"])
@pytest.mark.parametrize("sparse", [True, False])
def test_score_matches_full_logits(valid_docs, wordpiece, family, sparse, restore_runtime_globals):
    """Catches: NLL taken from the wrong logits rows (sparse prediction decodes only the labelled
    positions, dense all of them), or the BERT-family model's NSP head getting in the way; the final
    padded sequence's padding must not change the masked tokens' scores (it is masked out of attention)."""
    from cramming.conf import read_yaml
    from cramming.kernels import dispatch as ops
    from cramming.models import BertForMLM, BertForPreTraining

    ops.configure({"kernels": "torch"})  # the PyTorch reference: the Triton interpreter would crawl
    torch.manual_seed(0)
    arch = {**read_yaml("arch", "tiny.yaml"), "sparse_prediction": sparse, "type_vocab_size": 2}
    vocab = wordpiece.get_vocab_size()
    model = BertForMLM(arch, vocab) if family == "crammed" else BertForPreTraining(arch, vocab, nsp=True)
    data = {"seq_len": 128, "cls_per_sequence": False, "objective": "mlm" if family == "crammed" else "nsp"}
    held = build_heldout(read_documents(valid_docs, 6000), wordpiece, data, SETTINGS)
    assert not held.real[-1].all()  # the last sequence is padded
    result = score(model, held, batch_size=3)
    nll = 0.0
    with torch.no_grad():
        for ids, labels, real in zip(held.input_ids, held.labels, held.real):
            logits = model(torch.as_tensor(ids[real])[None])["logits"][0]  # (t, V): no padding at all
            picked = labels[real] != IGNORE_INDEX
            target = torch.as_tensor(labels[real][picked])
            nll += float(torch.nn.functional.cross_entropy(logits[picked], target, reduction="sum"))
    assert result["nll_sum"] == pytest.approx(nll, rel=1e-4)
    assert result["nats_per_masked_token"] == pytest.approx(nll / held.info["masked_tokens"], rel=1e-4)
