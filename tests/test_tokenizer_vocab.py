"""data.tokenizer.path may name BERT's own vocab.txt (bert-base-uncased), not only a tokenizer.json."""

import pytest
from _fixture_data import write_bert_layout_vocab

from cramming.data import prepare_corpus


@pytest.fixture(scope="module")
def bert_vocab(tmp_path_factory, tiny_corpus):
    """A vocab.txt laid out like bert-base-uncased's (generated: tests/_fixture_data.py)."""
    return write_bert_layout_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt", tiny_corpus["train"])


def test_vocab_txt_gives_bert_base_uncased_ids(tmp_path, tiny_corpus, bert_vocab):
    """Catches: the vocab file read as a tokenizer.json (error), ids shifted, or [MASK] split into pieces;
    the expected ids are bert-base-uncased's own ([CLS]=101, [SEP]=102, [MASK]=103, hello=7592, world=2088),
    where the generated vocab puts those tokens, in a file of BERT's 30522 lines."""
    corpus = prepare_corpus(
        {
            "files": [str(tiny_corpus["train"])],
            "cache_dir": str(tmp_path),
            "tokenizer": {"path": str(bert_vocab)},
        },
        log=None,
    )
    tok = corpus.tokenizer
    assert tok.get_vocab_size() == 30522
    assert tok.encode("Hello, World [MASK]").ids == [101, 7592, 1010, 2088, 103, 102]
    assert corpus.special_ids["mask"] == 103 and corpus.special_ids["pad"] == 0
    assert int(corpus.train[0].max()) < 30522


def test_unreadable_vocab_is_named(tmp_path, tiny_corpus):
    """Catches: a bad tokenizer path failing deep in training instead of naming the file."""
    bad = tmp_path / "vocab.txt"
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match="vocab.txt"):
        prepare_corpus(
            {
                "files": [str(tiny_corpus["train"])],
                "cache_dir": str(tmp_path),
                "tokenizer": {"path": str(bad)},
            },
            log=None,
        )
