"""Cross-split deduplication: a document of the validation split is dropped from train (``in_validation``),
whatever the packing or objective, and counted in the log. On the old pipeline (duplicates removed within a
split only) these tests fail: the shared document is trained on, and no ``in_validation`` count exists."""

import numpy as np
import pytest

from cramming.data import prepare_corpus, unpack_documents
from cramming.data.packing import block_bodies
from cramming.data.sources import iter_text_file

NO_FILTERS = {"max_tokens_per_char": None, "min_doc_chars": 0, "dedup": False}
LAYOUTS = {
    "stream": {"cls_per_sequence": True},
    "full-sentences": {"packing": "full-sentences", "tokenizer": {"kind": "bpe", "sample_mb": 1}},
    "nsp": {"objective": "nsp"},
}


@pytest.fixture(scope="module")
def split_files(tiny_corpus, tmp_path_factory):
    """train: documents 0-5; validation: document 20 and a copy of train's document 3."""
    docs = list(iter_text_file(tiny_corpus["train"]))[:21]
    root = tmp_path_factory.mktemp("splits")
    (root / "train.txt").write_text("\n\n".join(docs[:6]) + "\n", encoding="utf-8")
    (root / "valid.txt").write_text("\n\n".join([docs[20], docs[3]]) + "\n", encoding="utf-8")
    return root, docs


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_validation_document_is_dropped_from_train(split_files, tmp_path, layout):
    """Catches: a document in both splits kept in train (trained on and validated on), for every builder
    (cut stream, full-sentence blocks, NSP pairs), even with within-split dedup off; and a drop that is
    not counted in the log or also empties the validation split."""
    root, docs = split_files
    cfg = {"source": "local", "files": [str(root / "train.txt")], "validation_files": [str(root / "valid.txt")],
           "vocab_size": 1000, "seq_len": 64, "cache_dir": str(tmp_path / "cache"), "num_workers": 1,
           "filters": dict(NO_FILTERS), "tokenizer": {"sample_mb": 1}} | LAYOUTS[layout]  # fmt: skip
    log = []
    corpus = prepare_corpus(cfg, log=log.append)
    dropped = corpus.stats["filters"]["train"]["in_validation"]
    shared = corpus.tokenizer.encode(docs[3].replace("\n", " "), add_special_tokens=False).ids
    assert dropped["documents"] == 1 and dropped["chars"] == len(docs[3])
    assert (
        corpus.stats["documents"] == 5 and corpus.stats["splits"]["valid"]["filters"]["documents_kept"] == 2
    )
    assert any("in_validation 1 docs" in line for line in log)
    if layout == "stream":
        assert dropped["tokens"] == len(shared)
        back = unpack_documents(corpus.train[:], corpus.special_ids)
        assert len(back) == 5 and not any(np.array_equal(b, shared) for b in back)
    if layout == "full-sentences":
        train = np.concatenate(block_bodies(corpus.train[:], corpus.special_ids))
        probe = np.asarray(shared[5:25])  # a stretch of the shared document
        windows = np.lib.stride_tricks.sliding_window_view(train, len(probe))
        assert not (windows == probe).all(axis=1).any()


def test_no_validation_split_keeps_every_document(split_files, tmp_path):
    """Catches: the cross-split filter dropping anything when there is no validation split."""
    root, _ = split_files
    cfg = {"source": "local", "files": [str(root / "train.txt")], "vocab_size": 1000, "seq_len": 64,
           "cache_dir": str(tmp_path / "cache"), "num_workers": 1, "filters": dict(NO_FILTERS),
           "cls_per_sequence": True}  # fmt: skip
    corpus = prepare_corpus(cfg, log=None)
    assert (
        corpus.stats["documents"] == 6 and corpus.stats["filters"]["train"]["in_validation"]["documents"] == 0
    )
