"""data.tokenizer.path may name BERT's own vocab.txt (bert-base-uncased), not only a tokenizer.json."""

import pytest

from cramming.data import prepare_corpus


@pytest.fixture(scope="module")
def bert_vocab(shared_data):
    path = shared_data / "vocab" / "bert-base-uncased-vocab.txt"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


def test_vocab_txt_gives_bert_base_uncased_ids(tmp_path, tiny_corpus, bert_vocab):
    """Catches: the vocab file read as a tokenizer.json (error), ids shifted, or [MASK] split into pieces;
    the expected ids are bert-base-uncased's own ([CLS]=101, [SEP]=102, [MASK]=103, hello=7592, world=2088)."""
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
