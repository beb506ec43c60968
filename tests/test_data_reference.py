"""The reference's data recipe: sequences without [CLS] (data.cls_per_sequence), the sentence-length
curriculum (data.ordering), and the Pile presets (data=pile raw text, data=pile-readymade pre-tokenized),
the hub ones on local folders laid out like the hub datasets and loaded through the same `datasets` path."""

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from cramming.config.data_checks import ORDERINGS
from cramming.data import SequenceLoader, prepare_corpus, unpack_documents, validate_data_config
from cramming.data.filters import junk_threshold
from cramming.data.packing import Packer, token_stream
from cramming.data.sources import iter_text_file

CONF = Path(__file__).resolve().parents[1] / "conf" / "data"
SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
NO_FILTERS = {"max_tokens_per_char": None, "min_doc_chars": 0, "dedup": False}


@pytest.fixture(scope="module")
def tiny_docs(tiny_corpus) -> list[str]:
    return list(iter_text_file(tiny_corpus["train"]))


def preset(name: str, **overrides) -> dict:
    """conf/data/<name>.yaml on top of local.yaml, as Hydra composes it, with overrides."""
    cfg = OmegaConf.merge(OmegaConf.load(CONF / "local.yaml"), OmegaConf.load(CONF / f"{name}.yaml"))
    cfg.pop("defaults", None)
    cfg = OmegaConf.to_container(cfg)
    for key, value in overrides.items():
        cfg[key] = (
            {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
        )
    return cfg


def rust_stream(tok, docs: list[str], sep: int) -> np.ndarray:
    """The reference stream: every document's ids from the Rust tokenizer, each followed by [SEP]."""
    return token_stream([e.ids for e in tok.encode_batch(docs, add_special_tokens=False)], sep)


def stored(seqs) -> np.ndarray:
    """All sequences in storage order (before any curriculum permutation)."""
    return np.concatenate(list(seqs.iter_chunks())).astype(np.int64)


# ----------------------------------------------------------------------------- 2b: packing layouts


@pytest.mark.parametrize("cls_per_sequence", [True, False])
def test_packing_round_trips_the_token_stream(cls_per_sequence):
    """Catches a [CLS] where the reference has none (or none where asked), tokens lost or repeated at
    the boundaries between ``add`` calls, and a padded instead of dropped remainder."""
    rng = np.random.default_rng(0)
    docs = [rng.integers(5, 500, size=int(n)).astype(np.int32) for n in rng.integers(0, 90, size=60)]
    stream = token_stream(docs, SPECIAL["sep"])
    packer = Packer(16, SPECIAL, cls_per_sequence=cls_per_sequence)
    parts = [packer.add(token_stream(docs[i : i + 7], SPECIAL["sep"])) for i in range(0, len(docs), 7)]
    seqs = np.concatenate(parts + [packer.finish()])
    assert seqs.shape[1] == 16
    if cls_per_sequence:
        assert (seqs[:, 0] == SPECIAL["cls"]).all() and (seqs[:, -1] == SPECIAL["sep"]).all()
        body = seqs[:, 1:-1].reshape(-1)
        assert np.array_equal(body[: len(stream)], stream) and (body[len(stream) :] == SPECIAL["pad"]).all()
    else:
        assert not (seqs == SPECIAL["cls"]).any() and not (seqs == SPECIAL["pad"]).any()
        assert len(seqs) == len(stream) // 16 and packer.dropped == len(stream) % 16
        assert np.array_equal(seqs.reshape(-1), stream[: len(seqs) * 16])
    back = unpack_documents(seqs, SPECIAL, cls_per_sequence)
    assert all(np.array_equal(a, b) for a, b in zip(back, docs))
    assert len(back) == len(docs) if cls_per_sequence else len(docs) - len(back) <= 1


def test_prepared_corpus_without_cls_is_the_cut_stream(tmp_path, tiny_corpus, tiny_docs):
    """Catches the pipeline ignoring data.cls_per_sequence, or reordering/losing tokens before the cut."""
    cfg = {
        "files": [str(tiny_corpus["train"])],
        "vocab_size": 1000,
        "seq_len": 64,
        "cache_dir": str(tmp_path / "cache"),
        "tokenizer": {"sample_mb": 0.5},
        "filters": NO_FILTERS,
        "cls_per_sequence": False,
    }
    corpus = prepare_corpus(cfg, log=None)
    train = corpus.train[:]
    stream = rust_stream(corpus.tokenizer, tiny_docs, corpus.special_ids["sep"])
    assert not corpus.cls_per_sequence and not (train == corpus.special_ids["cls"]).any()
    assert len(train) == len(stream) // 64
    assert np.array_equal(train.reshape(-1), stream[: len(train) * 64])
    assert corpus.stats["splits"]["train"]["tokens_dropped"] == len(stream) % 64


# ----------------------------------------------------------------------------- 2c: data order


def test_sentence_length_order_over_the_whole_train_split(tmp_path, tiny_corpus):
    """Catches an ascending sort, a sort within windows only, ties broken at random, and a loader that
    shuffles a curriculum."""
    cfg = {
        "files": [str(tiny_corpus["train"])],
        "vocab_size": 1000,
        "seq_len": 64,
        "cache_dir": str(tmp_path / "cache"),
        "tokenizer": {"sample_mb": 0.5},
        "ordering": "sentence-length",
        "shard_sequences": 500,  # several shards: the order must be global, not per shard
    }
    corpus = prepare_corpus(cfg, log=None)
    period = corpus.tokenizer.token_to_id(".")
    order = corpus.train.order
    assert len(corpus.train.shards) > 2 and sorted(order.tolist()) == list(range(len(corpus.train)))
    served = corpus.train[:]
    dots = (served == period).sum(axis=1)
    assert np.all(np.diff(dots) <= 0) and dots[0] > dots[-1]
    ties = dots[1:] == dots[:-1]
    assert ties.any() and np.all(np.diff(order)[ties] > 0), "equal counts keep storage order"
    assert np.array_equal(served, stored(corpus.train)[order])
    for world_size in (1, 2):
        loader = SequenceLoader(corpus.train, 4, seed=3, rank=world_size - 1, world_size=world_size)
        first = np.concatenate([next(loader).numpy() for _ in range(3)])
        assert np.array_equal(first, served[world_size - 1 :: world_size][:12])


def test_quality_ordering_was_renamed(tmp_path, tiny_corpus):
    """Catches a silent fallback for the old name, and an error that does not say what to use instead."""
    cfg = {"files": [str(tiny_corpus["train"])], "cache_dir": str(tmp_path / "cache"), "ordering": "quality"}
    with pytest.raises(ValueError, match=r"data.ordering='quality'.*data.ordering=reverse-unigram") as err:
        validate_data_config(cfg)
    assert str(ORDERINGS) in str(err.value)


def test_unknown_ordering_fails_before_any_work(tmp_path, tiny_corpus):
    """Catches an unknown ordering found only after the corpus was tokenized (or never)."""
    cfg = {"files": [str(tiny_corpus["train"])], "cache_dir": str(tmp_path / "cache"), "ordering": "random"}
    with pytest.raises(ValueError, match=r"data.ordering='random'.*sentence-length") as err:
        prepare_corpus(cfg, log=None)
    assert str(ORDERINGS) in str(err.value)
    assert not (tmp_path / "cache").exists(), "nothing may be built before the config is checked"


# ----------------------------------------------------------------------------- 2d: the Pile presets


def test_shipped_pile_presets_validate():
    for name in ("pile", "pile-readymade"):
        validate_data_config(preset(name))
    pile = preset("pile")
    assert pile["hub"]["path"] == "monology/pile-uncopyrighted" and pile["hub"]["max_documents"] == 8_000_000
    assert pile["filters"] == {"max_tokens_per_char": 0.25, "min_doc_chars": 0, "dedup": False}
    assert preset("pile-readymade")["readymade"]["vocab_size"] == 32768


def test_pile_preset_on_a_local_hub_like_folder(tmp_path, tiny_docs):
    """data=pile through `datasets` on a folder laid out like the hub mirror (train/NN.jsonl, val.jsonl).
    Catches the preset missing the junk filter, the reference's layout or its order."""
    junk = " ".join(f"x{i}q{i * 7919 % 997}z{i * 31 % 89}k" for i in range(80))
    docs = tiny_docs[:12] + [junk] + tiny_docs[12:30]
    root = tmp_path / "pile-uncopyrighted"
    (root / "train").mkdir(parents=True)
    for part, chunk in enumerate((docs[:20], docs[20:])):
        rows = [json.dumps({"text": d, "meta": {"pile_set_name": "Wikipedia (en)"}}) for d in chunk]
        (root / "train" / f"{part:02d}.jsonl").write_text("\n".join(rows) + "\n")
    (root / "val.jsonl").write_text(json.dumps({"text": "held out elsewhere", "meta": {}}) + "\n")
    hub = {"path": str(root), "max_documents": 28}
    cfg = preset("pile", hub=hub, validation_split_documents=4, vocab_size=4096, seq_len=64)
    cfg.update(cache_dir=str(tmp_path / "cache"), tokenizer={**cfg["tokenizer"], "sample_mb": 0.5})
    corpus = prepare_corpus(cfg, log=None)
    # The preset's 0.25 bound, scaled for this small vocabulary (filters.junk_threshold); clean text
    # sits near it at 4096 tokens, so the expected survivors are read off the corpus' own tokenizer.
    tok, sep = corpus.tokenizer, corpus.special_ids["sep"]
    bound = junk_threshold(0.25, tok.get_vocab_size())

    def survivors(texts: list[str]) -> list[str]:
        lengths = [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]
        return [d for d, n in zip(texts, lengths) if n <= bound * len(d)]

    kept = survivors(docs[4:28])  # 4 held out for validation, the cap of 28 counted from the head
    assert junk not in kept and len(kept) >= 20
    assert corpus.stats["filters"]["train"]["junk_ratio"]["documents"] == 24 - len(kept)
    for split, texts in ((corpus.train, kept), (corpus.valid, survivors(docs[:4]))):
        rows = stored(split)
        assert np.array_equal(rows.reshape(-1), rust_stream(tok, texts, sep)[: rows.size])
    assert not corpus.cls_per_sequence and corpus.train.ordered
    dots = (corpus.train[:] == tok.token_to_id(".")).sum(axis=1)
    assert np.all(np.diff(dots) <= 0) and dots[0] > dots[-1]


REFERENCE_SPECIALS = ["<mask>", "<unk>", "<sep>", "<pad>", "<cls>", "<s>", "</s>"]  # ids in set() order


def reference_tokenizer(docs: list[str], size: int = 32768):
    """A tokenizer built like the reference's (its special names, Whitespace pre-tokenizer, a "$A <sep>"
    template) with exactly ``size`` tokens: the words of ``docs``, padded with filler pieces."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    words = sorted({w for d in docs for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(d.lower())})
    vocab = REFERENCE_SPECIALS + [w for w in words if w not in REFERENCE_SPECIALS]
    vocab += [f"##filler{i}" for i in range(size - len(vocab))]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()]
    )
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(REFERENCE_SPECIALS)
    ids = [("<sep>", vocab.index("<sep>")), ("<cls>", vocab.index("<cls>"))]
    tok.post_processor = processors.TemplateProcessing(
        single="$A <sep>", pair="<cls> $A <sep> $B:1 <sep>:1", special_tokens=ids
    )
    return tok


def write_readymade(
    root: Path, docs: list[str], seq_len: int = 128, curriculum: bool = True
) -> tuple[np.ndarray, dict]:
    """A folder laid out like the reference's hub dataset: data/train-*.parquet (input_ids rows, in its
    sentence-length order unless ``curriculum`` is false: stream order) and tokenizer/tokenizer.json.
    Returns (rows, the tokenizer's vocab)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tok = reference_tokenizer(docs)
    stream = np.concatenate([e.ids for e in tok.encode_batch(docs)])  # each document + <sep>
    rows = stream[: len(stream) // seq_len * seq_len].reshape(-1, seq_len)
    if curriculum:
        rows = rows[np.argsort(-(rows == tok.token_to_id(".")).sum(axis=1), kind="stable")]
    (root / "data").mkdir(parents=True)
    (root / "tokenizer").mkdir()
    table = pa.table({"input_ids": pa.array(rows.tolist(), pa.list_(pa.int32()))})
    pq.write_table(table, root / "data" / "train-00000-of-00001.parquet")
    tok.save(str(root / "tokenizer" / "tokenizer.json"))
    return rows.astype(np.int64), tok.get_vocab()


def test_pile_readymade_on_a_local_hub_like_folder(tmp_path, tiny_docs):
    """data=pile-readymade through `datasets`: rows kept as they are (ids, order, no [CLS]), the
    reference's special tokens mapped onto ours at the same ids, fine-tuning inputs [CLS] a [SEP] b [SEP].
    Catches re-tokenized or re-packed rows, mapping special tokens by position, and a lost curriculum."""
    rows, vocab = write_readymade(tmp_path / "readymade", tiny_docs[:40])
    cfg = preset("pile-readymade", hub={"path": str(tmp_path / "readymade")}, validation_split_documents=3)
    cfg["cache_dir"] = str(tmp_path / "cache")
    corpus = prepare_corpus(cfg, log=None)
    assert corpus.special_ids == {role: vocab[f"<{role}>"] for role in ("pad", "unk", "cls", "sep", "mask")}
    start = first_row_after_document_end(rows, 3, vocab["<sep>"])
    assert np.array_equal(corpus.valid[:], rows[:3]) and np.array_equal(corpus.train[:], rows[start:])
    assert corpus.train.ordered and not corpus.cls_per_sequence
    enc = corpus.tokenizer.encode("the cat", "sat.")
    assert enc.tokens[0] == "[CLS]" and enc.ids[0] == vocab["<cls>"] and enc.tokens.count("[SEP]") == 2
    again = prepare_corpus(cfg, log=None)
    assert again.reused and again.key == corpus.key


def first_row_after_document_end(rows: np.ndarray, held: int, sep: int) -> int:
    """Where train may start: ``held`` if row held-1 ends with <sep>, else after the first row from
    ``held`` on that holds a <sep> (the end of the document the holdout cut)."""
    if rows[held - 1, -1] == sep:
        return held
    return held + int(np.flatnonzero((rows[held:] == sep).any(axis=1))[0]) + 1


def test_readymade_holdout_splits_on_a_document_boundary(tmp_path, tiny_docs):
    """Catches (the old behaviour): the held-out rows counted as rows only, so the document running across
    the last held-out row went on into train and was trained on and validated on at once."""
    rows, vocab = write_readymade(tmp_path / "readymade", tiny_docs[:40], curriculum=False)
    sep = vocab["<sep>"]
    held = next(h for h in range(3, len(rows)) if rows[h - 1, -1] != sep and not (rows[h] == sep).any())
    cfg = preset("pile-readymade", hub={"path": str(tmp_path / "readymade")}, validation_split_documents=held)
    cfg |= {"cache_dir": str(tmp_path / "cache"), "ordering": "none"}
    log = []
    corpus = prepare_corpus(cfg, log=log.append)
    stream = rows.reshape(-1)
    ends = np.flatnonzero(stream[: held * rows.shape[1]] == sep)
    cut_doc_start = ends[-1] + 1 if len(ends) else 0
    cut_doc_end = cut_doc_start + np.flatnonzero(stream[cut_doc_start:] == sep)[0]
    train_from = len(stream) - corpus.train[:].size  # stream position where train starts
    assert np.array_equal(corpus.valid[:], rows[:held])
    assert train_from > cut_doc_end, "the document cut by the holdout must not reach train"
    assert train_from == first_row_after_document_end(rows, held, sep) * rows.shape[1]
    skipped = corpus.stats["splits"]["train"]["boundary_rows_skipped"]
    assert skipped >= 2 and any(f"{skipped} rows hold the rest" in line for line in log)


@pytest.mark.parametrize(("key", "value", "fixed"), [("vocab_size", 30000, "32768"), ("seq_len", 512, "128")])
def test_pile_readymade_fixed_sizes(tmp_path, key, value, fixed):
    """Catches a pre-tokenized corpus silently used with another vocabulary or sequence length."""
    cfg = preset("pile-readymade", **{key: value})
    with pytest.raises(ValueError, match=rf"data.{key}={value}.*fixed at {fixed}"):
        validate_data_config(cfg)


def test_pile_readymade_rejects_rows_of_the_wrong_length(tmp_path, tiny_docs):
    """Catches rows of another length being reshaped into wrong sequences."""
    write_readymade(tmp_path / "readymade", tiny_docs[:10], seq_len=100)
    cfg = preset("pile-readymade", hub={"path": str(tmp_path / "readymade")})
    cfg["cache_dir"] = str(tmp_path / "cache")
    with pytest.raises(ValueError, match=r"has 100 ids in column 'input_ids'.*data.seq_len=128"):
        prepare_corpus(cfg, log=None)


def test_pile_readymade_resumes_after_the_last_finished_shard(tmp_path, tiny_docs, monkeypatch):
    """Catches a resumed copy that re-reads rows already in finished shards (duplicated rows) or skips
    rows of the shard that was open at the interruption."""
    import cramming.data.readymade as readymade

    rows, _ = write_readymade(tmp_path / "readymade", tiny_docs[:40])
    cfg = preset("pile-readymade", hub={"path": str(tmp_path / "readymade")}, shard_sequences=40)
    cfg["cache_dir"] = str(tmp_path / "cache")
    real_rows = readymade.sources.hub_token_rows
    starts = []

    def interrupted(hub, column, seq_len, start=0, stop=None):
        starts.append(start)
        yield next(real_rows(hub, column, seq_len, start, stop))[:100]  # 2 full shards + 20 rows
        raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(readymade.sources, "hub_token_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(cfg, log=None)
    monkeypatch.setattr(readymade.sources, "hub_token_rows", lambda *a: starts.append(a[3]) or real_rows(*a))
    resumed = prepare_corpus(cfg, log=None)
    assert starts == [0, 80] and len(rows) > 100
    assert np.array_equal(resumed.train[:], rows)
