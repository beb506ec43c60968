"""prepare_corpus end to end on the tiny corpus: packing, tokenizer, cache reuse/keys, filters, resume,
damage detection, curriculum orderings, the hub path on a local hub-like folder, and config validation."""

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import cramming.data.prepare as prep
from cramming.data import SequenceLoader, prepare_corpus, unpack_documents, validate_data_config
from cramming.data.ordering import sequence_scores, unigram_rarity
from cramming.data.packing import Packer, token_stream
from cramming.data.prepare import corpus_key
from cramming.data.sources import iter_local, iter_text_file

NO_FILTERS = {"max_tokens_per_char": None, "min_doc_chars": 0, "dedup": False}


@pytest.fixture(scope="module")
def tiny_docs(tiny_corpus) -> list[str]:
    return list(iter_text_file(tiny_corpus["train"]))


@pytest.fixture(scope="module")
def small_txt(tiny_docs, tmp_path_factory) -> Path:
    """The first 30 documents of the tiny corpus (~360 KB of book text), for fast builds."""
    path = tmp_path_factory.mktemp("small") / "small.txt"
    path.write_text("\n\n".join(tiny_docs[:30]) + "\n\n", encoding="utf-8")
    return path


def rust_ids(tok, docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The reference: every document through the Rust tokenizer, as (flat ids, offsets)."""
    encodings = tok.encode_batch(docs, add_special_tokens=False)
    offsets = np.concatenate([[0], np.cumsum([len(e.ids) for e in encodings])])
    return np.array([i for e in encodings for i in e.ids], np.int64), offsets


def make_cfg(tmp_path: Path, files, **overrides) -> dict:
    cfg = {
        "source": "local",
        "files": [str(f) for f in files],
        "vocab_size": 1000,
        "seq_len": 64,
        "cache_dir": str(tmp_path / "cache"),
        "tokenizer": {"sample_mb": 0.5},
        "filters": dict(NO_FILTERS),
        "cls_per_sequence": True,  # the framed layout, so every document round-trips (no dropped remainder)
    }
    cfg.update(overrides)
    return cfg


class Log(list):
    def __call__(self, msg: str) -> None:
        self.append(msg)

    def has(self, text: str) -> bool:
        return any(text in line for line in self)


def test_packer_round_trips_token_stream():
    rng = np.random.default_rng(0)
    special = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    docs = [rng.integers(5, 500, size=int(n)).astype(np.int32) for n in rng.integers(0, 90, size=60)]
    packer = Packer(16, special)
    parts = [packer.add(token_stream(docs[i : i + 7], special["sep"])) for i in range(0, len(docs), 7)]
    seqs = np.concatenate(parts + [packer.finish()])
    assert seqs.shape[1] == 16 and (seqs[:, 0] == 2).all() and (seqs[:, -1] == 3).all()
    assert (seqs[:-1] != special["pad"]).all(), "only the last sequence may hold padding"
    back = unpack_documents(seqs, special)
    assert len(back) == len(docs)
    assert all(np.array_equal(a, b) for a, b in zip(back, docs))


def test_prepared_corpus_round_trips_documents(tmp_path, tiny_corpus, tiny_docs):
    log = Log()
    cfg = make_cfg(tmp_path, [tiny_corpus["train"]], validation_files=[str(tiny_corpus["valid"])])
    corpus = prepare_corpus(cfg, log=log)
    assert not corpus.reused and corpus.seq_len == 64 and corpus.vocab_size == 1000
    assert corpus.special_ids == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    train = corpus.train[np.arange(len(corpus.train))]
    assert train.shape == (len(corpus.train), 64) and train.dtype == np.int64
    assert corpus.train.shards[0].dtype == np.uint16
    flat, offsets = rust_ids(corpus.tokenizer, tiny_docs)
    back = unpack_documents(train, corpus.special_ids)
    assert len(back) == len(tiny_docs) == corpus.stats["documents"]
    for i, doc in enumerate(back):
        assert np.array_equal(doc, flat[offsets[i] : offsets[i + 1]])
    assert len(corpus.valid) > 0 and corpus.stats["valid_sequences"] == len(corpus.valid)
    assert corpus.stats["tokens"] == len(flat)
    assert json.loads((corpus.cache_dir / "stats.json").read_text())["sequences"] == len(corpus.train)
    assert log.has("prepared") and log.has("peak RSS")


def test_tokenizer_is_bert_style(tmp_path, small_txt):
    tok = prepare_corpus(make_cfg(tmp_path, [small_txt]), log=None).tokenizer
    enc = tok.encode("The cat sat.", "It was Héllo WÖRLD")
    assert enc.tokens[0] == "[CLS]" and enc.tokens.count("[SEP]") == 2 and enc.tokens[-1] == "[SEP]"
    second = enc.type_ids.index(1)
    assert enc.tokens[second - 1] == "[SEP]" and all(t == 1 for t in enc.type_ids[second:])
    assert tok.normalizer.normalize_str("Héllo WÖRLD — 中文") == "hello world  "
    plain = tok.encode("The cat sat.", add_special_tokens=False).tokens
    assert "[CLS]" not in plain and "[SEP]" not in plain


def test_cache_is_reused_without_tokenizing(tmp_path, small_txt, monkeypatch):
    cfg = make_cfg(tmp_path, [small_txt])
    first = prepare_corpus(cfg, log=None)

    def fail(*_args, **_kwargs):
        raise AssertionError("re-tokenized although the cache was valid")

    monkeypatch.setattr(prep, "encode_documents", fail)
    log = Log()
    second = prepare_corpus(cfg, log=log)
    assert second.reused and second.key == first.key == corpus_key(cfg)
    assert log.has(f"reusing cached corpus {first.key}") and log.has(str(first.cache_dir))
    assert np.array_equal(second.train[:], first.train[:])


def test_verified_files_are_not_hashed_again(tmp_path, small_txt, monkeypatch):
    import cramming.data.cache as cache

    cfg = make_cfg(tmp_path, [small_txt])
    prepare_corpus(cfg, log=None)  # the build hashes every file as it writes it, and remembers size and mtime

    def no_hashing(path):
        raise AssertionError(f"{path} hashed again although unchanged")

    monkeypatch.setattr(cache, "file_sha256", no_hashing)
    assert prepare_corpus(cfg, log=None).reused


def test_cache_key_changes_with_what_shapes_the_corpus(tmp_path, small_txt):
    base = make_cfg(tmp_path, [small_txt])
    changes = [
        {"seq_len": 128},
        {"vocab_size": 2000},
        {"filters": {**NO_FILTERS, "dedup": True}},
        {"filters": {**NO_FILTERS, "min_doc_chars": 100}},
        {"filters": {**NO_FILTERS, "max_tokens_per_char": 0.3}},
        {"ordering": "reverse-unigram"},
        {"ordering": "sentence-length"},
        {"cls_per_sequence": False},
        {"tokenizer": {"sample_mb": 0.25}},
    ]
    keys = {corpus_key(base)} | {corpus_key({**base, **c}) for c in changes}
    assert len(keys) == len(changes) + 1
    assert corpus_key({**base, "cache_dir": str(tmp_path / "elsewhere")}) == corpus_key(base)
    # The command line's typed schema gives 256.0 where a Python caller writes 256: one corpus, one key
    # (catches keys that split on the number's type, and caches made before the schema being rebuilt).
    whole = {**base, "tokenizer": {**base["tokenizer"], "sample_mb": 256}}
    assert corpus_key(whole) == corpus_key({**whole, "tokenizer": {**whole["tokenizer"], "sample_mb": 256.0}})
    assert corpus_key(whole) != corpus_key({**whole, "tokenizer": {**whole["tokenizer"], "sample_mb": 256.5}})
    before = corpus_key(base)
    stat = small_txt.stat()
    os.utime(small_txt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert corpus_key(base) != before, "a changed input file (mtime) is a different corpus"


def test_existing_tokenizer_file_is_used(tmp_path, small_txt):
    first = prepare_corpus(make_cfg(tmp_path, [small_txt]), log=None)
    path = str(first.cache_dir / "tokenizer.json")
    cfg = make_cfg(
        tmp_path, [small_txt], tokenizer={"path": path}, seq_len=32, cache_dir=str(tmp_path / "other")
    )
    log = Log()
    second = prepare_corpus(cfg, log=log)
    assert log.has("using tokenizer") and not log.has("trained WordPiece")
    assert second.key == corpus_key(cfg) and second.tokenizer.get_vocab() == first.tokenizer.get_vocab()
    assert second.tokenizer.encode("a", "b").tokens == ["[CLS]", "a", "[SEP]", "b", "[SEP]"]


def test_changed_seq_len_builds_a_new_entry(tmp_path, small_txt):
    a = prepare_corpus(make_cfg(tmp_path, [small_txt]), log=None)
    b = prepare_corpus(make_cfg(tmp_path, [small_txt], seq_len=32), log=None)
    assert not b.reused and b.cache_dir != a.cache_dir and b.train[0].shape == (32,)


def test_filters_remove_what_they_claim(tmp_path, tiny_docs):
    real = [tiny_docs[i] for i in range(8)]
    junk = " ".join(f"x{i}q{i * 7919 % 997}z{i * 31 % 89}k" for i in range(80))
    docs = real[:4] + ["Too short."] + [real[1].upper(), real[2]] + [junk] + real[4:]
    path = tmp_path / "docs.txt"
    path.write_text("\n\n".join(docs) + "\n\n", encoding="utf-8")
    filters = {"max_tokens_per_char": 0.45, "min_doc_chars": 200, "dedup": True}
    corpus = prepare_corpus(make_cfg(tmp_path, [path], filters=filters), log=None)
    flat, off = rust_ids(corpus.tokenizer, docs)
    ntok = np.diff(off)
    removed = corpus.stats["filters"]["train"]
    assert removed["too_short"] == {"documents": 1, "chars": len("Too short."), "tokens": int(ntok[4])}
    assert removed["duplicate"]["documents"] == 2
    assert removed["duplicate"]["tokens"] == int(ntok[1] + ntok[2])
    assert removed["junk_ratio"]["documents"] == 1 and removed["junk_ratio"]["tokens"] == int(ntok[7])
    assert ntok[7] / len(junk) > 0.45 > max(ntok[i] / len(docs[i]) for i in (0, 1, 2, 3, 8))
    back = unpack_documents(corpus.train[:], corpus.special_ids)
    kept = [0, 1, 2, 3, 8, 9, 10, 11]
    assert len(back) == len(kept) == corpus.stats["documents"]
    assert all(np.array_equal(b, flat[off[i] : off[i + 1]]) for b, i in zip(back, kept))


@pytest.mark.parametrize("cls_per_sequence", [True, False])
def test_interrupted_preparation_resumes_from_last_shard(tmp_path, small_txt, monkeypatch, cls_per_sequence):
    # cls_per_sequence=False: catches a resume carry that strips [CLS]/[SEP] from unframed rows.
    overrides = {"shard_sequences": 300, "batch_documents": 3, "filters": {**NO_FILTERS, "dedup": True}}
    overrides["cls_per_sequence"] = cls_per_sequence
    overrides["num_workers"] = 1  # encode in this process, where the test can count the documents
    cfg = make_cfg(tmp_path, [small_txt], **overrides)
    real_save = prep.save_progress

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt("simulated interruption after the first shard")

    monkeypatch.setattr(prep, "save_progress", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(cfg, log=None)
    monkeypatch.setattr(prep, "save_progress", real_save)
    encoded = []
    real_encode = prep.encode_documents
    monkeypatch.setattr(
        prep, "encode_documents", lambda enc, docs: encoded.extend(docs) or real_encode(enc, docs)
    )
    log = Log()
    resumed = prepare_corpus(cfg, log=log)
    assert log.has("resuming train from shard 1")
    assert 0 < len(encoded) < 30, "the resumed run must not re-tokenize the documents of the finished shard"
    # WordPiece training is not bit-deterministic across runs: the clean build reuses the same tokenizer.
    shutil.copytree(tmp_path / "cache" / "tokenizers", tmp_path / "clean" / "tokenizers")
    clean = prepare_corpus({**cfg, "cache_dir": str(tmp_path / "clean")}, log=None)
    assert resumed.key == clean.key and len(resumed.train.shards) == len(clean.train.shards) > 2
    assert np.array_equal(resumed.train[:], clean.train[:])
    assert resumed.stats["documents"] == clean.stats["documents"] == 30
    assert len(unpack_documents(resumed.train[:], resumed.special_ids, cls_per_sequence)) >= 29


def test_worker_processes_give_the_same_corpus(tmp_path, small_txt):
    cfg = make_cfg(tmp_path, [small_txt], batch_documents=4, num_workers=1)
    inline = prepare_corpus(cfg, log=None)
    pooled = prepare_corpus({**cfg, "num_workers": 2, "cache_dir": str(tmp_path / "pool")}, log=None)
    flat, off = rust_ids(pooled.tokenizer, list(iter_text_file(small_txt)))
    back = unpack_documents(pooled.train[:], pooled.special_ids)
    assert all(np.array_equal(b, flat[off[i] : off[i + 1]]) for i, b in enumerate(back)) and len(back) == 30
    assert len(unpack_documents(inline.train[:], inline.special_ids)) == 30


@pytest.mark.parametrize("verify", ["full", "sizes"])
def test_damaged_cache_is_detected_and_rebuilt(tmp_path, small_txt, verify):
    cfg = make_cfg(tmp_path, [small_txt], verify=verify, shard_sequences=500)
    good = prepare_corpus(cfg, log=None)
    expected = good.train[:]
    shard = good.cache_dir / "train-00000.bin"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 10)
    del good
    log = Log()
    again = prepare_corpus(cfg, log=log)
    assert not again.reused and log.has("damaged") and log.has("train-00000.bin")
    assert np.array_equal(again.train[:], expected)


def test_tampered_manifest_and_flipped_bytes_are_detected(tmp_path, small_txt):
    cfg = make_cfg(tmp_path, [small_txt])
    good = prepare_corpus(cfg, log=None)
    manifest = good.cache_dir / "manifest.json"
    data = json.loads(manifest.read_text())
    data["splits"]["train"]["sequences"] += 1
    manifest.write_text(json.dumps(data))
    log = Log()
    assert not prepare_corpus(cfg, log=log).reused and log.has("checksum")
    shard = good.cache_dir / "train-00000.bin"
    raw = bytearray(shard.read_bytes())
    raw[100] ^= 0xFF
    shard.write_bytes(bytes(raw))
    log = Log()
    assert not prepare_corpus(cfg, log=log).reused and log.has("sha256")


def test_reverse_unigram_ordering(tmp_path, small_txt):
    corpus = prepare_corpus(make_cfg(tmp_path, [small_txt], ordering="reverse-unigram"), log=None)
    assert corpus.train.ordered
    order = corpus.train.order
    assert sorted(order.tolist()) == list(range(len(corpus.train)))
    special = list(corpus.special_ids.values())
    scores = sequence_scores(corpus.train, unigram_rarity(corpus.train, 1000, special), special)
    assert np.all(np.diff(scores[order]) >= 0)
    assert not np.array_equal(order, np.arange(len(order)))
    first = next(SequenceLoader(corpus.train, 4))  # ordered data is served in order, not shuffled
    assert np.array_equal(first.numpy(), corpus.train[:4])


def test_local_formats_read_the_same_documents(tmp_path, tiny_docs):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = tiny_docs[:5]
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(("\n\n".join(docs) + "\n\n").encode()))
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    pq.write_table(pa.table({"text": docs}), tmp_path / "a.parquet")
    for name in ("a.txt.gz", "a.jsonl.gz", "a.parquet"):
        assert list(iter_local([str(tmp_path / name)], "text")) == docs


def write_hub_like(root: Path, docs: list[str]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / "wikipedia" / "20231101.en"
    folder.mkdir(parents=True)
    ids = [str(i) for i in range(len(docs))]
    table = pa.table({"id": ids, "url": ["u"] * len(docs), "title": ids, "text": docs})
    pq.write_table(table, folder / "train-00000-of-00001.parquet")
    return root / "wikipedia"


def test_hub_source_on_local_hub_like_folder(tmp_path, tiny_docs):
    docs = tiny_docs[:40]
    hub = {"path": str(write_hub_like(tmp_path, docs)), "name": "20231101.en", "max_documents": 30}
    cfg = make_cfg(tmp_path, [], source="hub", hub=hub, validation_split_documents=5)
    validate_data_config(cfg)
    corpus = prepare_corpus(cfg, log=None)
    flat, off = rust_ids(corpus.tokenizer, docs)
    train = unpack_documents(corpus.train[:], corpus.special_ids)
    valid = unpack_documents(corpus.valid[:], corpus.special_ids)
    assert len(valid) == 5 and len(train) == 25
    assert all(np.array_equal(v, flat[off[i] : off[i + 1]]) for i, v in enumerate(valid))
    assert all(np.array_equal(t, flat[off[i + 5] : off[i + 6]]) for i, t in enumerate(train))


def bad_file(tmp_path: Path, kind: str) -> tuple[dict, str]:
    """A config with one bad value, and a fragment the error message must contain."""
    cfg = make_cfg(tmp_path, [])
    if kind == "missing":
        return {**cfg, "files": [str(tmp_path / "nope-*.txt")]}, "nope-*.txt"
    if kind == "vocab":
        (tmp_path / "ok.txt").write_text("hello world\n\n")
        return {**cfg, "files": [str(tmp_path / "ok.txt")], "vocab_size": 10}, "vocab_size=10"
    if kind == "seq_len":
        (tmp_path / "ok.txt").write_text("hello world\n\n")
        return {**cfg, "files": [str(tmp_path / "ok.txt")], "seq_len": 2}, "seq_len=2"
    if kind == "source":
        return {**cfg, "source": "ftp"}, "'ftp'"
    names = {"empty": "e.txt", "utf8": "l1.txt", "ext": "doc.csv", "gzip": "bad.txt.gz", "jsonl": "x.jsonl"}
    path = tmp_path / names[kind]
    content = {
        "empty": b"",
        "utf8": "caf\u00e9 cr\u00e8me\n\n".encode("latin-1"),
        "ext": b"a,b\n",
        "gzip": b"this is not gzip data at all",
        "jsonl": b'{"body": "no text field"}\n',
    }[kind]
    path.write_bytes(content)
    return {**cfg, "files": [str(path)]}, names[kind]


@pytest.mark.parametrize(
    "kind", ["missing", "empty", "utf8", "ext", "gzip", "jsonl", "vocab", "seq_len", "source"]
)
def test_bad_inputs_raise_value_error_naming_the_value(tmp_path, kind):
    cfg, fragment = bad_file(tmp_path, kind)
    with pytest.raises(ValueError) as err:
        validate_data_config(cfg)
    assert fragment in str(err.value)
    with pytest.raises(ValueError):
        prepare_corpus(cfg, log=None)


def test_non_utf8_beyond_the_checked_prefix_fails_naming_the_file(tmp_path, small_txt):
    late = tmp_path / "late.txt"
    late.write_bytes(small_txt.read_bytes() * 2 + "caf\u00e9 au lait\n\n".encode("latin-1"))
    cfg = make_cfg(tmp_path, [late])
    validate_data_config(cfg)  # only a prefix is checked up front
    with pytest.raises(ValueError, match="late.txt"):
        prepare_corpus(cfg, log=None)


def test_shipped_configs_validate(tiny_corpus):
    """The data presets as Hydra composes them pass validation and carry what they promise.

    Catches a check that rejects a shipped value, a wikipedia.yaml key misspelled (local.yaml's
    default would silently win), and code defaults drifting from conf/data/local.yaml.
    """
    from hydra import compose, initialize_config_dir

    from cramming.config import CONF_PATH
    from cramming.data.config import as_dict, defaults

    train = str(tiny_corpus["train"])
    with initialize_config_dir(config_dir=CONF_PATH, version_base="1.3"):
        local = compose("pretrain", overrides=["data=local", f"data.files=[{train}]"]).data
        hub = compose("pretrain", overrides=["data=wikipedia"]).data
    validate_data_config(local)
    validate_data_config(hub)
    assert as_dict(local) == {**defaults(), "files": [train]}
    assert as_dict({"files": [train]}) == as_dict(
        local
    )  # a config built outside Hydra gets the same defaults
    hub = as_dict(hub)
    assert (hub["source"], hub["hub"]["name"], hub["validation_split_documents"]) == (
        "hub",
        "20231101.en",
        2000,
    )
    assert hub["hub"]["path"] == "wikimedia/wikipedia" and hub["seq_len"] == 128
    with pytest.raises(ValueError, match="data.seq_len=4 "):
        validate_data_config({**as_dict(local), "seq_len": 4})


def test_junk_bound_scales_for_small_vocabularies(tiny_corpus, tmp_path):
    from cramming.data.filters import junk_threshold

    assert junk_threshold(0.25, 32768) == 0.25
    assert junk_threshold(0.25, 50000) == 0.25
    assert junk_threshold(None, 1000) is None
    assert junk_threshold(0.25, 2048) == pytest.approx(0.25 * 15 / 11)
    # Clean English text survives the default bound with a small vocabulary.
    cfg = {
        "source": "local",
        "files": [str(tiny_corpus["train"])],
        "vocab_size": 2048,
        "cache_dir": str(tmp_path / "cache"),
    }
    corpus = prepare_corpus(cfg, log=None)
    removed = corpus.stats["filters"]["train"]["junk_ratio"]["documents"]
    # of the 80 book documents (0.26..0.33 tokens per character here): the unscaled 0.25 dropped them all
    assert removed <= 8 and corpus.stats["documents"] >= 72


def test_unreachable_hub_dataset_is_a_clear_error():
    from cramming.data.sources import load_hub_stream

    # Tests run with HF_DATASETS_OFFLINE=1, so the hub cannot be reached.
    with pytest.raises(ValueError, match=r"data.hub.path='someone/no-such-corpus'.*data=sample.*data=local"):
        load_hub_stream({"path": "someone/no-such-corpus", "name": "en", "split": "train"})
