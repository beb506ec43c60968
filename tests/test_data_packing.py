"""RoBERTa's FULL-SENTENCES packing (data.packing=full-sentences, recipe=roberta): blocks of whole
sentences opening with <s>, </s> after every paragraph and one more after every document, <pad> after.

Each test names the bug it catches. On the old pipeline (the cut token stream for recipe=roberta) the
end-to-end tests fail: blocks opened mid-sentence, and none opened with <s>."""

import numpy as np
import pytest
import torch

from cramming.data import prepare_corpus, validate_data_config
from cramming.data.masking import RobertaCollator
from cramming.data.packing import (
    FullSentencePacker,
    _block_spans,
    block_bodies,
    sentence_pieces,
    sentence_units,
)

SPECIAL = {"cls": 0, "pad": 1, "sep": 2, "unk": 3, "mask": 4}
WORDS = "alpha beta gamma delta river stone cloud night light green small house water tree bird".split()


def generated_corpus(path, docs: int = 40, seed: int = 0) -> list[str]:
    """Documents of 1-3 paragraphs of 1-6 sentences of 3-20 words; every 7th document holds one sentence of
    ~150 words (longer than a 64-token block). Written as .txt (blank line between documents)."""
    rng, out = np.random.default_rng(seed), []
    for d in range(docs):
        paragraphs = []
        for _ in range(int(rng.integers(1, 4))):
            sentences = []
            for s in range(int(rng.integers(1, 7))):
                n = 150 if d % 7 == 3 and s == 0 else int(rng.integers(3, 21))
                words = [WORDS[int(i)] for i in rng.integers(0, len(WORDS), n)]
                sentences.append(" ".join(words).capitalize() + rng.choice([".", "!", "?"]))
            paragraphs.append(" ".join(sentences))
        out.append("\n".join(paragraphs))
    path.write_text("\n\n".join(out) + "\n", encoding="utf-8")
    return out


def test_sentence_pieces_keep_the_text_and_mark_paragraph_ends():
    """Catches: text lost or moved at a cut (white space must stay with the next sentence, so byte-level BPE
    encodes the pieces as the whole line), a cut inside a sentence, or paragraph ends misplaced."""
    doc = 'One two. Three "four!" Five six?  Seven\nEight nine. Ten.\n\nEleven'
    pieces, ends = sentence_pieces(doc)
    assert pieces == ["One two.", ' Three "four!"', " Five six?", "  Seven", "Eight nine.", " Ten.", "Eleven"]
    assert ends == [False, False, False, True, False, True, True]


def test_units_carry_paragraph_and_document_separators():
    """Catches: a missing </s> after a paragraph, no extra </s> between documents, or ids moved."""
    flat = np.array([10, 11, 12, 13, 14, 15], np.int32)
    offsets = np.array([0, 2, 3, 6])  # three sentences: [10 11] [12] [13 14 15]
    units, unit_offsets = sentence_units(
        flat, offsets, np.array([False, True, True]), np.array([False, False, True]), SPECIAL["sep"]
    )
    assert units.tolist() == [10, 11, 12, 2, 13, 14, 15, 2, 2]
    assert unit_offsets.tolist() == [0, 2, 4, 9]


def test_block_spans_are_greedy_and_cut_only_overlong_units():
    """Catches: a block closed while the next unit still fits, a block longer than its room, or an overlong
    unit not cut into full blocks."""
    spans, open_start = _block_spans(np.array([3, 4, 2, 9, 1, 20, 2]), 0, 8)
    # [3 4] | [2] (9 does not fit after it) | 9 -> [8] + 1 open, + [1] -> [1 1] | 20 -> [8] [8] + 4, + 2 -> open
    assert spans == [(0, 7), (7, 9), (9, 17), (17, 19), (19, 27), (27, 35)]
    assert open_start == 35


def test_packer_keeps_every_token_in_order_and_resumes_exactly():
    """Catches: tokens lost or reordered, a block without <s>, and a resume carry that does not regenerate
    the unwritten blocks and the open block exactly."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 20, 200)
    sizes[[10, 50]] = (37, 64)  # longer than a block
    units = np.arange(5, 5 + sizes.sum()).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    whole = FullSentencePacker(16, SPECIAL)
    blocks = np.concatenate([whole.add(units, offsets), whole.finish()])
    assert (blocks[:, 0] == SPECIAL["cls"]).all() and blocks.shape[1] == 16
    assert np.array_equal(np.concatenate(block_bodies(blocks, SPECIAL)), units)
    first = FullSentencePacker(16, SPECIAL)
    head = first.add(units[: offsets[100]], offsets[:101])
    carry = first.resume_state(head[5:])  # rows 5.. were not written when the run stopped
    second = FullSentencePacker(16, SPECIAL, carry=carry)
    tail = second.add(units[offsets[100] :], offsets[100:] - offsets[100])
    assert np.array_equal(np.concatenate([head[:5], tail, second.finish()]), blocks)


@pytest.fixture(scope="module")
def roberta_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("fullsent")
    docs = generated_corpus(root / "train.txt")
    cfg = {
        "source": "local",
        "files": [str(root / "train.txt")],
        "vocab_size": 400,
        "seq_len": 64,
        "packing": "full-sentences",
        "tokenizer": {"kind": "bpe", "sample_mb": 1},
        "filters": {"max_tokens_per_char": None, "min_doc_chars": 0, "dedup": False},
        "cache_dir": str(root / "cache"),
        "num_workers": 1,
        "batch_documents": 7,  # several batches: blocks run across batch boundaries
    }
    return prepare_corpus(cfg, log=None), docs


def expected_units(tok, docs: list[str]) -> list[list[int]]:
    """Every sentence's ids, with </s> after a paragraph's last sentence and one more after a document's."""
    sep, units = tok.token_to_id("</s>"), []
    for doc in docs:
        pieces, paragraph_ends = sentence_pieces(doc)
        for i, (piece, end) in enumerate(zip(pieces, paragraph_ends)):
            ids = tok.encode(piece, add_special_tokens=False).ids
            units.append(ids + [sep] * (int(end) + int(i == len(pieces) - 1)))
    return units


def test_blocks_hold_whole_sentences_and_open_with_s(roberta_corpus):
    """Catches (the old behaviour): a block opening mid-sentence when the sentence before it fits in a block,
    a block without <s> first, a block closed while the next sentence would still have fit, and text or
    separators lost, moved or added between the documents and the blocks."""
    corpus, docs = roberta_corpus
    blocks, ids = corpus.train[:], corpus.special_ids
    room = corpus.seq_len - 1
    assert (blocks[:, 0] == ids["cls"]).all()
    units = expected_units(corpus.tokenizer, docs)
    stream = [t for u in units for t in u]
    bodies = block_bodies(blocks, ids)
    assert [int(t) for b in bodies for t in b] == stream
    starts = np.cumsum([0] + [len(u) for u in units])  # where each sentence starts in the stream
    overlong = [(s, s + len(u)) for s, u in zip(starts, units) if len(u) > room]
    assert overlong, "the generated corpus must hold sentences longer than a block"
    position = 0
    for k, body in enumerate(bodies):
        mid_overlong = any(a < position < b and (position - a) % room == 0 for a, b in overlong)
        assert position in set(starts.tolist()) or mid_overlong, f"block {k} opens mid-sentence"
        position += len(body)
        nxt = np.searchsorted(starts, position)
        if position in starts and nxt < len(units) and k + 1 < len(bodies):
            assert len(body) + len(units[nxt]) > room, f"block {k} closed although the next sentence fits"
    assert (blocks == ids["sep"]).sum() == sum(doc.count("\n") + 2 for doc in docs)


def test_classifier_token_is_seen_in_pretraining(roberta_corpus):
    """Catches: fine-tuning classifying on a token (<s>) that no pretraining input holds (the old packing
    put no <s> anywhere), or padding that is attended or masked."""
    corpus, _ = roberta_corpus
    first = corpus.tokenizer.encode("a sentence", "another one").ids[0]
    blocks = torch.from_numpy(corpus.train[:])
    assert (blocks[:, 0] == first).all()
    batch = RobertaCollator(corpus.vocab_size, corpus.special_ids)(blocks, torch.Generator().manual_seed(0))
    pad = blocks == corpus.special_ids["pad"]
    assert pad.any() and torch.equal(batch["attention_mask"].bool(), ~pad)
    assert (batch["labels"][pad] == -100).all() and torch.equal(batch["input_ids"][pad], blocks[pad])


def test_seq_len_512_blocks(roberta_corpus, tmp_path):
    """Catches: data.seq_len=512 refused or packed as 128-token blocks for full-sentence packing."""
    corpus, docs = roberta_corpus
    path = tmp_path / "t.txt"
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    cfg = {"source": "local", "files": [str(path)], "seq_len": 512, "packing": "full-sentences",
           "tokenizer": {"path": str(corpus.cache_dir / "tokenizer.json"), "kind": "bpe"}, "vocab_size": 400,
           "filters": {"max_tokens_per_char": None, "min_doc_chars": 0, "dedup": False},
           "cache_dir": str(tmp_path / "cache"), "num_workers": 1}  # fmt: skip
    long = prepare_corpus(cfg, log=None)
    blocks = long.train[:]
    assert blocks.shape[1] == 512 and (blocks[:, 0] == long.special_ids["cls"]).all()
    pad = long.special_ids["pad"]
    assert (blocks != pad).mean() > (corpus.train[:] != pad).mean(), "longer blocks leave less padding"


def test_interrupted_full_sentence_preparation_resumes_exactly(roberta_corpus, tmp_path, monkeypatch):
    """Catches: a resume carry that loses or reframes the blocks not yet written and the open block (the
    stream packer's carry would turn them into a cut stream), so the resumed corpus differs from a clean one."""
    import shutil

    import cramming.data.prepare as prep

    corpus, docs = roberta_corpus
    path = tmp_path / "t.txt"
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    cfg = {"source": "local", "files": [str(path)], "seq_len": 64, "packing": "full-sentences",
           "tokenizer": {"path": str(corpus.cache_dir / "tokenizer.json"), "kind": "bpe"}, "vocab_size": 400,
           "filters": {"max_tokens_per_char": None, "min_doc_chars": 0, "dedup": False},
           "cache_dir": str(tmp_path / "cache"), "num_workers": 1, "batch_documents": 3,
           "shard_sequences": 24}  # fmt: skip
    real_save, real_state, unwritten = prep.save_progress, FullSentencePacker.resume_state, []

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt("simulated interruption after the first shard")

    def counted(packer, rows):
        unwritten.append(len(rows))
        return real_state(packer, rows)

    monkeypatch.setattr(prep, "save_progress", save_then_crash)
    monkeypatch.setattr(FullSentencePacker, "resume_state", counted)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(cfg, log=None)
    assert unwritten[0] > 0, "the interruption must leave closed blocks unwritten (change shard_sequences)"
    monkeypatch.setattr(prep, "save_progress", real_save)
    log = []
    resumed = prepare_corpus(cfg, log=log.append)
    assert any("resuming train from shard 1" in line for line in log)
    shutil.rmtree(tmp_path / "cache")
    clean = prepare_corpus(cfg, log=None)
    assert len(resumed.train.shards) > 2 and np.array_equal(resumed.train[:], clean.train[:])


@pytest.mark.parametrize(
    "change, words",
    [
        ({"packing": "sentences"}, ["data.packing='sentences'", "full-sentences"]),
        ({"packing": "full-sentences", "cls_per_sequence": True}, ["data.cls_per_sequence=true"]),
        ({"packing": "full-sentences", "objective": "nsp"}, ["data.objective=nsp"]),
    ],
)
def test_bad_packing_settings(tiny_corpus, change, words):
    """Catches: an unknown packing, or full-sentence blocks combined with a layout that frames them again."""
    with pytest.raises(ValueError) as err:
        validate_data_config({"source": "local", "files": [str(tiny_corpus["train"])], **change})
    assert all(w in str(err.value) for w in words), str(err.value)
