"""The BERT and RoBERTa recipes' parts: NSP pairs, pair batches, byte-level BPE, schedule, bad input."""

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from cramming.budget import lr_factor
from cramming.config import CONF_PATH
from cramming.data import prepare_corpus, validate_data_config
from cramming.data.masking import PairCollator
from cramming.data.pairs import frame_pairs, pairs_from_document
from cramming.data.tokenizer import special_ids, train_tokenizer
from cramming.models import IGNORE_INDEX

SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}


def synthetic_pool(docs: int = 12, sentences: int = 9, seed: int = 0) -> list:
    """Document d holds consecutive ids d*10000 + 1, 2, ... cut into sentences of 5-30 tokens."""
    rng, pool = np.random.default_rng(seed), []
    for d in range(docs):
        lengths = rng.integers(5, 30, sentences)
        ids = d * 10000 + 1 + np.arange(lengths.sum())
        pool.append(np.split(ids.astype(np.int32), np.cumsum(lengths)[:-1]))
    return pool


def test_pairs_are_true_next_or_from_another_document():
    """Catches: an "is next" B taken from another document or before A, a random B from A's own document,
    pairs longer than seq_len, and a random/next split far from half."""
    pool, seq_len, rng = synthetic_pool(), 64, np.random.default_rng(1)
    examples = [e for i in range(len(pool)) for e in pairs_from_document(i, pool, seq_len, 0.1, rng)]
    for a, b, is_random in examples:
        assert a and b and len(a) + len(b) + 3 <= seq_len
        doc_a, doc_b = a[0] // 10000, b[0] // 10000
        assert {t // 10000 for t in a} == {doc_a} and {t // 10000 for t in b} == {doc_b}
        assert np.all(np.diff(a) == 1) and np.all(np.diff(b) == 1)  # contiguous stretches (truncated at ends)
        if is_random:
            assert doc_b != doc_a
        else:
            assert doc_b == doc_a and b[0] > a[-1]
    more = [e for s in range(2, 8) for i in range(12) for e in pairs_from_document(
        i, synthetic_pool(seed=s), 128, 0.1, np.random.default_rng(s))]  # fmt: skip
    fraction = np.mean([e[2] for e in examples + more])
    assert 0.4 < fraction < 0.6, fraction


def test_pair_batch_has_token_types_mask_and_labels():
    """Catches: token type 1 leaking onto A or the padding, padding attended, special tokens masked,
    the NSP label lost between the stored row and the batch."""
    seq_len = 16
    rows = torch.from_numpy(
        frame_pairs([([10, 11, 12], [20, 21], 0), ([30], [40, 41, 42, 43], 1)], seq_len, SPECIAL)
    )
    batch = PairCollator(100, SPECIAL, 0.15)(rows, torch.Generator().manual_seed(0))
    assert batch["token_type_ids"][0].tolist() == [0] * 5 + [1] * 3 + [0] * 8  # [CLS] a a a [SEP] | b b [SEP]
    assert batch["attention_mask"][1].tolist() == [1] * 8 + [0] * 8  # [CLS] a [SEP] b b b b [SEP]
    assert batch["next_sentence_label"].tolist() == [0, 1]
    many = torch.from_numpy(
        frame_pairs([(list(range(10, 16)), list(range(20, 26)), 0)] * 400, seq_len, SPECIAL)
    )
    batch = PairCollator(100, SPECIAL, 0.15)(many, torch.Generator().manual_seed(0))
    chosen = batch["labels"] != IGNORE_INDEX
    assert not chosen[many[:, :seq_len] < 5].any()  # [CLS] [SEP] [PAD] never chosen
    assert 0.13 < chosen.sum() / (400 * 12) < 0.17


@pytest.fixture(scope="module")
def nsp_corpus(tiny_corpus, tmp_path_factory):
    cfg = {"source": "local", "files": [str(tiny_corpus["train"])], "vocab_size": 2048, "seq_len": 64,
           "cache_dir": str(tmp_path_factory.mktemp("cache")), "objective": "nsp", "num_workers": 1}  # fmt: skip
    return prepare_corpus(cfg, log=None)


def test_nsp_corpus_rows(nsp_corpus):
    """Catches: the pipeline writing pairs that do not fit seq_len, lacking [CLS]/[SEP] framing, or a
    next/random split far from half on real text."""
    rows, ids = nsp_corpus.train[:], nsp_corpus.special_ids
    seq_len = nsp_corpus.seq_len
    b_start, length, label = rows[:, seq_len], rows[:, seq_len + 1], rows[:, seq_len + 2]
    assert (length <= seq_len).all() and (b_start < length).all()
    assert (rows[:, 0] == ids["cls"]).all()
    assert (rows[np.arange(len(rows)), b_start - 1] == ids["sep"]).all()
    assert (rows[np.arange(len(rows)), length - 1] == ids["sep"]).all()
    assert 0.45 < label.mean() < 0.58


def test_byte_level_bpe_round_trips_any_utf8():
    """Catches: a normaliser or pre-tokeniser that loses case, accents, emoji, control bytes or spacing."""
    docs = [line for line in open(__file__, encoding="utf-8")] * 3
    tok = train_tokenizer(docs, 400, {"kind": "bpe"})
    ids = special_ids(tok)
    assert (ids["cls"], ids["pad"], ids["sep"], ids["unk"]) == (0, 1, 2, 3)
    assert ids["mask"] == tok.get_vocab_size() - 1  # RoBERTa: <mask> is the last id
    rng = np.random.default_rng(0)
    samples = [
        "Crème Brûlée — naïve café 🙂\n\tTAB  spaces\x00\x07",
        "日本語のテキスト",
        "Ünïcödé\u200b\u0301x",
    ]
    samples += ["".join(chr(c) for c in rng.integers(1, 0x2FFF, 40)) for _ in range(20)]
    for text in samples:
        encoded = tok.encode(text, add_special_tokens=False)
        assert tok.get_vocab_size() not in encoded.ids and ids["unk"] not in encoded.ids
        assert tok.decode(encoded.ids, skip_special_tokens=False) == text


def test_budget_linear_schedule():
    """Catches: no warm-up, a decay that misses 0 at the end, or a peak not at the warm-up's end."""
    assert lr_factor("budget-linear", 0.0, 0.1) == 0.0
    assert lr_factor("budget-linear", 0.05, 0.1) == pytest.approx(0.5)
    assert lr_factor("budget-linear", 0.1, 0.1) == pytest.approx(1.0)
    assert lr_factor("budget-linear", 0.55, 0.1) == pytest.approx(0.5)
    assert lr_factor("budget-linear", 1.0, 0.1) == 0.0


def compose_with(overrides):
    with initialize_config_dir(config_dir=CONF_PATH, version_base="1.3"):
        return compose("pretrain", overrides=overrides)


def test_recipe_group_selects_whole_recipes():
    """Catches: a recipe that leaves today's crammed settings in place, or overrides that stop applying."""
    crammed = compose_with([])
    assert (crammed.recipe, crammed.arch.name, crammed.data.objective) == ("crammed", "crammed-bert", "mlm")
    bert = compose_with(["recipe=bert", "arch.num_layers=2", "arch.hidden_size=128"])
    assert (bert.arch.name, bert.arch.num_layers, bert.arch.hidden_size, bert.arch.norm_position) == (
        "bert-base", 2, 128, "post")  # fmt: skip
    assert (bert.data.objective, bert.data.mlm_probability, bert.train.lr, tuple(bert.train.betas)) == (
        "nsp", 0.15, 1e-4, (0.9, 0.999))  # fmt: skip
    roberta = compose_with(["recipe=roberta"])
    assert (roberta.data.tokenizer.kind, roberta.data.vocab_size, roberta.data.objective) == (
        "bpe",
        50265,
        "mlm",
    )
    assert (tuple(roberta.train.betas), roberta.train.eps, roberta.train.warmup_fraction) == (
        (0.9, 0.98),
        1e-6,
        0.06,
    )
    assert roberta.train.batch_size == 8192 and roberta.arch.type_vocab_size == 1


def test_roberta_recipe_packs_full_sentences_at_128_and_takes_512(tiny_corpus):
    """Catches: recipe=roberta on the cut token stream (no <s> in pretraining), a default other than the
    README's 128, or data.seq_len=512 (RoBERTa's own) refused."""
    from omegaconf import OmegaConf

    from cramming.config import validate_run

    roberta = compose_with(["recipe=roberta"])
    assert (roberta.data.packing, roberta.data.seq_len, roberta.data.cls_per_sequence) == (
        "full-sentences", 128, False)  # fmt: skip
    assert compose_with([]).data.packing == "stream"  # crammed keeps its cut stream
    long = compose_with(
        ["recipe=roberta", "data=local", f"data.files=[{tiny_corpus['train']}]", "data.seq_len=512"]
    )
    validate_run(OmegaConf.to_container(long, resolve=True))


# BERT's BasicTokenizer (google-research/bert tokenization.py, do_lower_case=True) on UNICODE_TEXT: control
# characters removed, CJK characters split, lowercased, NFD with combining marks removed, punctuation split.
UNICODE_TEXT = "Héllo WÖRLD! 中文字 naïve Ñandú\u00a0— Ελληνικά Привет Straße"
BERT_BASIC = ["hello", "world", "!", "中", "文", "字", "naive", "nandu", "—", "ελληνικα", "привет", "straße"]


def pre_tokens(options: dict, text: str) -> list[str]:
    from cramming.data.tokenizer import untrained_tokenizer

    tok = untrained_tokenizer(options)
    return [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text))]


def test_bert_recipe_keeps_unicode_as_bert_does():
    """Catches: recipe=bert dropping non-ASCII characters (crammedBERT's choice, not BERT's), CJK characters
    left unsplit, accents kept; and crammed losing its ASCII-only normalizer."""
    from omegaconf import OmegaConf

    bert = OmegaConf.to_container(compose_with(["recipe=bert"]).data.tokenizer)
    assert pre_tokens(bert, UNICODE_TEXT) == BERT_BASIC
    crammed = OmegaConf.to_container(compose_with([]).data.tokenizer)
    assert pre_tokens(crammed, UNICODE_TEXT) == ["hello", "world", "!", "naive", "nandu", "strae"]


def test_unicode_tokenizer_encodes_kept_characters():
    """Catches: the encoder's ASCII fast path used for a tokenizer that keeps Unicode (it would drop the
    characters the normalizer keeps), or the trained vocabulary lacking the frequent non-ASCII characters."""
    from cramming.data.encode import Encoder

    docs = [f"{UNICODE_TEXT} the cat sat on the mat number {i}." for i in range(300)]
    tok = train_tokenizer(docs, 300, {"lowercase": True, "strip_accents": True, "ascii_only": False})
    text = [UNICODE_TEXT, "日本 Crème brûlée"]
    flat, offsets = Encoder(tok).encode(text)
    expected = [i for e in tok.encode_batch(text, add_special_tokens=False) for i in e.ids]
    assert flat.tolist() == expected
    tokens = tok.encode(UNICODE_TEXT, add_special_tokens=False).tokens
    assert {"中", "文", "字"} <= set(tokens) and "[UNK]" not in tokens


def test_unknown_recipe_lists_the_recipes():
    """Catches: a typo in recipe= silently training the default recipe."""
    with pytest.raises(Exception) as err:
        compose_with(["recipe=albert"])
    assert all(name in str(err.value) for name in ("bert", "crammed", "roberta"))


@pytest.mark.parametrize(
    "change, words",
    [
        ({"seq_len": 12}, ["data.seq_len=12", ">= 16"]),
        ({"tokenizer": {"kind": "bpe"}}, ["data.tokenizer.kind=bpe", "data.objective=nsp"]),
        ({"objective": "sop"}, ["data.objective='sop'", "nsp"]),
    ],
)
def test_bad_recipe_data_settings(tiny_corpus, change, words):
    """Catches: a pair too short to hold A and B, or BPE with BERT's NSP pairs, accepted silently."""
    cfg = {"source": "local", "files": [str(tiny_corpus["train"])], "objective": "nsp", **change}
    with pytest.raises(ValueError) as err:
        validate_data_config(cfg)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_single_document_corpus_is_a_clear_error(tmp_path):
    """Catches: NSP with no other document to draw random segments from (an endless loop or a crash)."""
    one = tmp_path / "one.txt"
    one.write_text("A first sentence is here. A second one follows it. " * 30 + "\n")
    cfg = {"source": "local", "files": [str(one)], "vocab_size": 300, "seq_len": 32,
           "cache_dir": str(tmp_path / "cache"), "objective": "nsp", "num_workers": 1,
           "filters": {"min_doc_chars": 0, "dedup": False, "max_tokens_per_char": None}}  # fmt: skip
    with pytest.raises(ValueError, match="at least two documents"):
        prepare_corpus(cfg, log=None)
