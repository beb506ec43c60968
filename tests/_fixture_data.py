"""Test data made at fixture time, so that no test needs any data folder outside the repository.

- ``write_tiny_corpus``: a plain-text train/valid slice of the sample corpus shipped in the package
  (cramming/data/sample: public-domain books; valid is two books that train does not hold).
- ``write_glue``: a folder in the official ``glue_data/`` layout with every task of the benchmark
  (CoLA without header, SST-2, MRPC with its BOM and stray quotes, STS-B float scores, QQP with a
  malformed row, MNLI's three classes with matched/mismatched dev and test files, QNLI, RTE, WNLI,
  diagnostic/AX), sentences made from templates with a seeded RNG. Returns what it wrote (rows,
  label counts, first texts) so tests can check a reader against it.
- ``write_bert_layout_vocab``: a 30522-line WordPiece ``vocab.txt`` laid out like bert-base-uncased's
  (specials and a few words at BERT's ids), for the vocab.txt reader.
"""

from __future__ import annotations

import gzip
import random
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = REPO_ROOT / "cramming" / "data" / "sample"
TRAIN_DOCS, VALID_DOCS = 80, 10  # ~0.95 MB + ~0.11 MB of text: tests stay fast, shards and ramps still fill


def _documents(path: Path) -> list[str]:
    text = gzip.open(path, "rt", encoding="utf-8").read()
    return [d for d in text.split("\n\n") if d.strip()]


def _write_docs(path: Path, docs: list[str]) -> Path:
    path.write_text("\n\n".join(docs) + "\n\n", encoding="utf-8")
    return path


def write_tiny_corpus(root: Path) -> dict[str, Path]:
    """{"train", "valid"}: plain .txt files; train spreads evenly over all ten train books."""
    train = _documents(SAMPLE / "train.txt.gz")
    step = len(train) / TRAIN_DOCS
    picked = [train[int(i * step)] for i in range(TRAIN_DOCS)]
    valid = _documents(SAMPLE / "valid.txt.gz")[:VALID_DOCS]
    root.mkdir(parents=True, exist_ok=True)
    return {"train": _write_docs(root / "train.txt", picked), "valid": _write_docs(root / "valid.txt", valid)}


# ----------------------------------------------------------------------------------------------- GLUE

NOUNS = "cat dog man woman child house river city king queen ship horse garden letter doctor soldier".split()
VERBS = "saw found took left followed painted visited answered watched carried".split()
GOOD = "charming wonderful moving brilliant delightful warm funny beautiful".split()
BAD = "dull tedious clumsy boring awful lifeless bleak tiresome".split()
ROWS = {  # (train, dev, test) rows per task; MNLI's dev/test are per matched/mismatched file
    "CoLA": (240, 80, 60), "SST-2": (480, 160, 60), "MRPC": (240, 80, 60), "STS-B": (240, 80, 60),
    "QQP": (240, 80, 60), "MNLI": (240, 60, 40), "QNLI": (240, 80, 60), "RTE": (240, 80, 60),
    "WNLI": (120, 40, 30),
}  # fmt: skip
AX_ROWS = 60
MNLI_HEADER = [
    "index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
    "sentence1_parse", "sentence2_parse", "sentence1", "sentence2",
]  # fmt: skip
NLI3 = ("entailment", "neutral", "contradiction")


def _clause(rng: random.Random) -> tuple[str, str, str]:
    return rng.choice(NOUNS), rng.choice(VERBS), rng.choice(NOUNS)


def _sentence(rng: random.Random) -> str:
    a, v, b = _clause(rng)
    return f"The {a} {v} the {b} near the {rng.choice(NOUNS)}."


def _pair(rng: random.Random, same: bool) -> tuple[str, str]:
    """Two sentences that say the same thing (same=True) or not."""
    a, v, b = _clause(rng)
    first = f"The {a} {v} the {b}."
    other = rng.choice([n for n in NOUNS if n != b])
    return first, (f"A {a} {v} a {b}." if same else f"The {a} never {v} the {other}.")


def _write(path: Path, header: list[str] | None, rows: list[list[str]], bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ([header] if header else []) + rows
    text = "\n".join("\t".join(r) for r in lines) + "\n"
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")


def _record(manifest: dict, key: str, texts_a: list, texts_b: list | None, labels: list | None) -> None:
    manifest[key] = {
        "rows": len(texts_a),
        "labels": Counter(labels) if labels is not None else None,
        "first": (texts_a[0], texts_b[0] if texts_b else None),
        "score_head": labels[:2] if labels and isinstance(labels[0], float) else None,
    }


def _cola(root: Path, rng: random.Random, manifest: dict) -> None:
    for split, n in zip(("train", "dev"), ROWS["CoLA"]):
        rows, texts, labels = [], [], []
        for i in range(n):
            ok = i % 10 < 7
            a, v, b = _clause(rng)
            text = f"The {a} {v} the {b}." if ok else f"The {a} the {b} {v} the."
            rows.append(["gj04", "1" if ok else "0", "" if ok else "*", text])
            texts.append(text)
            labels.append("acceptable" if ok else "unacceptable")
        _write(root / "CoLA" / f"{split}.tsv", None, rows)  # no header, as in GLUE
        _record(manifest, f"CoLA/{split}", texts, None, labels)
    test = [[str(i), _sentence(rng)] for i in range(ROWS["CoLA"][2])]
    _write(root / "CoLA" / "test.tsv", ["index", "sentence"], test)  # the test file has one
    _record(manifest, "CoLA/test", [r[1] for r in test], None, None)


def _sst2(root: Path, rng: random.Random, manifest: dict) -> None:
    for split, n in zip(("train", "dev"), ROWS["SST-2"]):
        rows = []
        for i in range(n):
            positive = (i * 7) % 11 < 6
            word = rng.choice(GOOD if positive else BAD)
            tail = f"about a {rng.choice(NOUNS)} and a {rng.choice(NOUNS)} " if rng.random() < 0.5 else ""
            rows.append([f"it 's a {word} {rng.choice(NOUNS)} story {tail}. ", "1" if positive else "0"])
        _write(root / "SST-2" / f"{split}.tsv", ["sentence", "label"], rows)
        labels = ["positive" if r[1] == "1" else "negative" for r in rows]
        _record(manifest, f"SST-2/{split}", [r[0] for r in rows], None, labels)
    test = [[str(i), f"a {rng.choice(GOOD + BAD)} film ."] for i in range(ROWS["SST-2"][2])]
    _write(root / "SST-2" / "test.tsv", ["index", "sentence"], test)
    _record(manifest, "SST-2/test", [r[1] for r in test], None, None)


def _mrpc(root: Path, rng: random.Random, manifest: dict) -> None:
    """MRPC's quirks: a BOM before the header, and sentences with unbalanced quote characters that
    only parse right with quoting off."""
    header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    for split, n in zip(("train", "dev"), ROWS["MRPC"]):
        rows = []
        for i in range(n):
            same = i % 3 != 0
            a, b = _pair(rng, same)
            if i % 5 == 0:
                b = f'" {b}'  # an opening quote with no closing one
            rows.append(["1" if same else "0", str(1000 + 2 * i), str(1001 + 2 * i), a, b])
        _write(root / "MRPC" / f"{split}.tsv", header, rows, bom=True)
        labels = ["equivalent" if r[0] == "1" else "not_equivalent" for r in rows]
        _record(manifest, f"MRPC/{split}", [r[3] for r in rows], [r[4] for r in rows], labels)
    test = [[str(i), str(i), str(i + 1), *_pair(rng, i % 2 == 0)] for i in range(ROWS["MRPC"][2])]
    _write(root / "MRPC" / "test.tsv", ["index", *header[1:]], test)
    _record(manifest, "MRPC/test", [r[3] for r in test], [r[4] for r in test], None)


def _stsb(root: Path, rng: random.Random, manifest: dict) -> None:
    header = [
        "index",
        "genre",
        "filename",
        "year",
        "old_index",
        "source1",
        "source2",
        "sentence1",
        "sentence2",
    ]
    for split, n in zip(("train", "dev"), ROWS["STS-B"]):
        rows = []
        for i in range(n):
            score = 5.0 if i == 0 else 3.8 if i == 1 else round(rng.uniform(0.0, 5.0), 3)
            a, b = _pair(rng, score >= 2.5)
            rows.append([str(i), "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none", a, b])
            rows[-1].append(f"{score:.3f}")
        _write(root / "STS-B" / f"{split}.tsv", header + ["score"], rows)
        _record(
            manifest,
            f"STS-B/{split}",
            [r[7] for r in rows],
            [r[8] for r in rows],
            [float(r[9]) for r in rows],
        )
    test = [[str(i), "main-news", "headlines", "2015", f"{i:04d}", "none", "none", *_pair(rng, True)]
            for i in range(ROWS["STS-B"][2])]  # fmt: skip
    _write(root / "STS-B" / "test.tsv", header, test)
    _record(manifest, "STS-B/test", [r[7] for r in test], [r[8] for r in test], None)


def _qqp(root: Path, rng: random.Random, manifest: dict) -> None:
    """QQP's quirk: a few rows with a missing field, which the reader skips with a warning."""
    header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    for split, n in zip(("train", "dev"), ROWS["QQP"]):
        rows = []
        for i in range(n):
            same = i % 3 == 0
            a, b = _pair(rng, same)
            rows.append(
                [
                    str(i),
                    str(2 * i),
                    str(2 * i + 1),
                    f"Why did {a[:-1].lower()}?",
                    f"Why did {b[:-1].lower()}?",
                ]
            )
            rows[-1].append("1" if same else "0")
        labels = ["duplicate" if r[5] == "1" else "not_duplicate" for r in rows]
        _record(manifest, f"QQP/{split}", [r[3] for r in rows], [r[4] for r in rows], labels)
        malformed = [["999999", "1", "2", "How is a question split over two lines"]]
        _write(root / "QQP" / f"{split}.tsv", header, rows[:5] + malformed + rows[5:])
    test = [
        [str(i), *(f"Why did {s[:-1].lower()}?" for s in _pair(rng, True))] for i in range(ROWS["QQP"][2])
    ]
    _write(root / "QQP" / "test.tsv", ["id", "question1", "question2"], test)
    _record(manifest, "QQP/test", [r[1] for r in test], [r[2] for r in test], None)


def _nli3_row(rng: random.Random, i: int, genre: str, label: str | None) -> list[str]:
    a, v, b = _clause(rng)
    premise = f"The {a} {v} the {b} in the morning."
    hypothesis = {
        "entailment": f"The {a} {v} something.",
        "neutral": f"The {a} was tired.",
        "contradiction": f"The {a} never {v} anything.",
        None: f"The {a} {v} the {b}.",
    }[label]
    return [
        str(i),
        str(100 + i),
        f"{100 + i}e",
        genre,
        "( x )",
        "( y )",
        "(ROOT x)",
        "(ROOT y)",
        premise,
        hypothesis,
    ]


def _mnli(root: Path, rng: random.Random, manifest: dict) -> None:
    """MNLI: string labels of three classes; train has label1 + gold_label, dev label1..5 + gold_label;
    matched and mismatched dev/test files come from different genres."""
    n_train, n_dev, n_test = ROWS["MNLI"]
    train = [_nli3_row(rng, i, "fiction", NLI3[i % 3]) + [NLI3[i % 3]] * 2 for i in range(n_train)]
    _write(root / "MNLI" / "train.tsv", MNLI_HEADER + ["label1", "gold_label"], train)
    _record(manifest, "MNLI/train", [r[8] for r in train], [r[9] for r in train], [r[-1] for r in train])
    dev_header = MNLI_HEADER + [f"label{k}" for k in range(1, 6)] + ["gold_label"]
    for kind, genre in (("matched", "government"), ("mismatched", "letters")):
        dev = [_nli3_row(rng, i, genre, NLI3[(i + 1) % 3]) + [NLI3[(i + 1) % 3]] * 6 for i in range(n_dev)]
        _write(root / "MNLI" / f"dev_{kind}.tsv", dev_header, dev)
        _record(manifest, f"MNLI/dev_{kind}", [r[8] for r in dev], [r[9] for r in dev], [r[-1] for r in dev])
        test = [_nli3_row(rng, i, genre, None) for i in range(n_test)]
        _write(root / "MNLI" / f"test_{kind}.tsv", MNLI_HEADER, test)
        _record(manifest, f"MNLI/test_{kind}", [r[8] for r in test], [r[9] for r in test], None)


def _pair_task(
    root: Path, rng: random.Random, manifest: dict, task: str, columns: tuple, names: tuple
) -> None:
    """QNLI, RTE, WNLI: index, two text columns, a label (names: TSV value for related, unrelated)."""
    for split, n in zip(("train", "dev"), ROWS[task]):
        rows = []
        for i in range(n):
            related = i % 2 == 0
            a, b = _pair(rng, related)
            if task == "QNLI":
                a = f"What did the {a.split()[1]} do?"
            rows.append([str(i), a, b, names[0] if related else names[1]])
        _write(root / task / f"{split}.tsv", ["index", *columns, "label"], rows)
        _record(manifest, f"{task}/{split}", [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows])
    test = [[str(i), *_pair(rng, i % 2 == 0)] for i in range(ROWS[task][2])]
    _write(root / task / "test.tsv", ["index", *columns], test)
    _record(manifest, f"{task}/test", [r[1] for r in test], [r[2] for r in test], None)


def write_glue(root: Path, seed: int = 0) -> dict:
    """Every GLUE task in the official layout under ``root``; returns {"TASK/stem": what was written}."""
    rng = random.Random(seed)
    manifest: dict = {}
    for writer in (_cola, _sst2, _mrpc, _stsb, _qqp, _mnli):
        writer(root, rng, manifest)
    _pair_task(root, rng, manifest, "QNLI", ("question", "sentence"), ("entailment", "not_entailment"))
    _pair_task(root, rng, manifest, "RTE", ("sentence1", "sentence2"), ("entailment", "not_entailment"))
    _pair_task(root, rng, manifest, "WNLI", ("sentence1", "sentence2"), ("1", "0"))
    ax = [[str(i), *_pair(rng, i % 2 == 0)] for i in range(AX_ROWS)]
    _write(root / "diagnostic" / "diagnostic.tsv", ["index", "sentence1", "sentence2"], ax)
    _record(manifest, "diagnostic/diagnostic", [r[1] for r in ax], [r[2] for r in ax], None)
    return manifest


# ------------------------------------------------------------------------------------- BERT vocab.txt

BERT_SIZE = 30522
BERT_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ",": 1010, "world": 2088,
            "hello": 7592}  # fmt: skip


def write_bert_layout_vocab(path: Path, corpus: Path) -> Path:
    """A vocab.txt with bert-base-uncased's size and layout: [PAD] at 0, [unusedN] fillers, [UNK] [CLS]
    [SEP] [MASK] at 100-103, ASCII characters from 999 ("," lands on 1010, as in BERT), "world" and
    "hello" at BERT's ids, and in between WordPiece tokens trained on ``corpus``."""
    from _glue_fixtures import train_tokenizer

    learned = sorted(
        train_tokenizer(corpus, lines=4000, vocab_size=6000).get_vocab().items(), key=lambda kv: kv[1]
    )
    chars = [chr(c) for c in range(ord("!"), ord("~") + 1) if not chr(c).isupper()]
    slots: list[str | None] = [None] * BERT_SIZE
    for token, index in BERT_IDS.items():
        slots[index] = token
    for offset, char in enumerate(chars):
        slots[999 + offset] = slots[999 + offset] or char
    taken = set(filter(None, slots))
    words = iter(t for t, _ in learned if t not in taken and not t.startswith("["))
    unused = 0
    for i in range(BERT_SIZE):
        if slots[i] is None:
            slots[i] = next(words, None) if i >= 999 else None
        if slots[i] is None:
            slots[i] = f"[unused{unused}]"
            unused += 1
    path.write_text("\n".join(slots) + "\n", encoding="utf-8")
    return path
