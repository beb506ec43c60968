"""The fast encoder gives exactly the Rust tokenizer's ids (no special tokens), on real and tricky text."""

import numpy as np
import pytest

from cramming.data.encode import WORDS, Encoder, fast_path_applies, normalize_ascii, parallel_encode
from cramming.data.sources import iter_text_file
from cramming.data.tokenizer import train_tokenizer

TRICKY = [
    "Weird  doc\n\n with\tblank lines\n  and   tabs ## h\u00e9llo\r\nx",
    "ctrl\x07char x\x0by\x7fz \x00nul \ufffd replacement",
    "",
    "\n\n\n",
    "a" * 150 + " ok " + "b" * 99,
    "under_score e1 [cls] 10\u00a0km 5\u2009mm \u0130stanbul Kelvin\u212a \ufb01ne \u00bd \u2460 caf\u00e9",
    "literal specials stay special: [SEP] and [MASK] here, [PAD][UNK][CLS]",
    "CJK \u4e2d\u6587\u5b57 and emoji \U0001f600 and Greek \u03b1\u03b2\u03b3 and \u00c5ngstr\u00f6m \u00df",
    "quotes \u201cfancy\u201d \u2018single\u2019 dash \u2013 em\u2014dash ellipsis\u2026 bullet \u2022 nbsp\u00a0end",
    "zero\u200bwidth soft\u00adhyphen line\u2028sep para\u2029sep ideographic\u3000space",
    "Punctuation!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ and digits 3.14159 1,000,000",
]


@pytest.fixture(scope="module")
def docs(tiny_corpus) -> list[str]:
    return (
        list(iter_text_file(tiny_corpus["train"]))[:40] + list(iter_text_file(tiny_corpus["valid"])) + TRICKY
    )


@pytest.fixture(scope="module")
def tokenizer(docs):
    return train_tokenizer(docs[:20], 800, {"lowercase": True, "strip_accents": True, "ascii_only": True})


def rust(tok, docs):
    encodings = tok.encode_batch(docs, add_special_tokens=False)
    return [e.ids for e in encodings]


def split(flat, offsets):
    return [flat[offsets[i] : offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]


def test_fast_path_matches_rust_tokenizer(tokenizer, docs):
    encoder = Encoder(tokenizer)
    assert encoder.fast
    got = split(*encoder.encode(docs[:30])) + split(*encoder.encode(docs[30:]))  # second call: warm cache
    want = rust(tokenizer, docs)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"document {i} differs: {docs[i][:80]!r}"


def test_normalisation_matches_tokenizer_normaliser(tokenizer):
    for text in TRICKY:
        # the tokenizer turns tabs and newlines into spaces; the fast path keeps newlines as paragraph ends
        want = tokenizer.normalizer.normalize_str(text)
        assert normalize_ascii(text).replace("\t", " ").replace("\n", " ").replace("\r", " ") == want


def test_small_cache_restarts_and_stays_exact(tokenizer, docs):
    encoder = Encoder(tokenizer, max_words=50)
    got = split(*encoder.encode(docs[:10])) + split(*encoder.encode(docs[10:20]))
    assert got == rust(tokenizer, docs[:20])
    second = set(WORDS.findall(normalize_ascii("\n".join(docs[10:20]) + "\n")))
    both = second | set(WORDS.findall(normalize_ascii("\n".join(docs[:10]) + "\n")))
    assert len(encoder.index) == len(second) < len(both)  # started over when full, kept only this batch


def test_other_normalisation_falls_back_to_rust(docs):
    cased = train_tokenizer(docs[:10], 600, {"lowercase": False, "strip_accents": False, "ascii_only": False})
    assert not fast_path_applies(cased)
    encoder = Encoder(cased)
    assert not encoder.fast
    assert split(*encoder.encode(TRICKY)) == rust(cased, TRICKY)


def test_parallel_encode_keeps_order(tokenizer, docs):
    batches = [docs[i : i + 7] for i in range(0, len(docs), 7)]
    out = list(parallel_encode(iter(batches), tokenizer, workers=2))
    assert [b for b, _ in out] == batches
    got = [ids for _, encoded in out for ids in split(*encoded)]
    assert got == rust(tokenizer, docs)
    assert np.concatenate([e[0] for _, e in out]).dtype == np.int32


class UnstartableWorkers:
    """A tokenizer whose serialised form cannot be loaded: worker start-up fails."""

    def __init__(self, tok):
        self._tok = tok

    def to_str(self):
        return "{not a tokenizer"

    def __getattr__(self, name):
        return getattr(self._tok, name)


def test_broken_worker_pool_falls_back_to_this_process(tokenizer, docs):
    batches = [docs[i : i + 9] for i in range(0, len(docs), 9)]
    with pytest.warns(UserWarning, match="encoding in this process"):
        out = list(parallel_encode(iter(batches), UnstartableWorkers(tokenizer), workers=2))
    assert [b for b, _ in out] == batches
    assert [ids for _, encoded in out for ids in split(*encoded)] == rust(tokenizer, docs)
